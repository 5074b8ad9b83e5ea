"""A real ``citeline serve`` process on the Acme example, with keys for alice, bob and an admin."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from citeline.domain import Principal
from citeline.facade import Citeline
from citeline.serving.vllm_server import default_venv
from citeline.settings import Settings
from tests.conftest import REPO


@dataclass
class Server:
    url: str
    keys: dict[str, str]  # user -> API key ("admin" is an admin key of principal "ops")
    namespace: str
    pg_url: str
    env: dict[str, str]
    config: Path
    log: Path

    def settings(self) -> Settings:
        return Settings.load(self.config, database_url=self.pg_url, database={"namespace": self.namespace})

    def owner_sql(self, query: str, *args: object) -> list[tuple]:
        """Run SQL as the database owner in the server's namespace (to tamper, or to check)."""
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.namespace)))
            cur = conn.execute(query, args or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def run_server(tmp: Path, pg_url: str, embedder, backend: str = "extractive",
               extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    root = tmp / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    namespace = f"e2e_{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "CITELINE_DATABASE_URL": pg_url, "CITELINE_DATABASE__NAMESPACE": namespace,
           "CITELINE_CONFIG": str(root / "citeline.toml"), "CITELINE_GENERATION__BACKEND": backend,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    config = root / "citeline.toml"
    settings = Settings.load(config, database_url=pg_url, database={"namespace": namespace},
                             generation={"backend": backend})
    keys: dict[str, str] = {}
    with Citeline(settings, embedder=embedder) as cl:
        cl.sync()
        cl.admin.import_principals(root / "principals.toml", actor="test")
        cl.admin.add_principal(Principal("ops", ("staff",)), actor="test")
        for user in ("alice", "bob", "carol"):
            keys[user] = cl.admin.create_key(user, actor="test").secret
        keys["admin"] = cl.admin.create_key("ops", actor="test", admin=True).secret
    port = free_port()
    log = tmp / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from citeline.cli import main; main()", "serve", "--port", str(port),
             "--log-level", "warning"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Server(url, keys, namespace, pg_url, env, config, log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


@contextlib.contextmanager
def run_model_server(env: dict[str, str], log: Path, cwd: Path | None = None) -> Iterator[str]:
    """``citeline model-server`` on a free loopback port with ``env`` (the whole environment), its output in
    ``log``; its URL (no ``/v1``) once ``/health`` answers, and the process group stopped afterwards."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from citeline.cli import main; main()", "model-server",
                                 "--port", str(port)], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, path="/health")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@contextlib.contextmanager
def embedded_model_server(smollm2_dir: Path, home: Path) -> Iterator[str]:
    """:func:`run_model_server` with the embedded backend serving SmolLM2 (``home``: CITELINE_HOME and the
    log); its ``/v1`` URL, what the openai backend talks to."""
    env = {**os.environ, "CITELINE_GENERATION__OPTIONS__MODEL": str(smollm2_dir),
           "CITELINE_GENERATION__BACKEND": "embedded", "CITELINE_HOME": str(home)}
    with run_model_server(env, home / "model-server.log") as url:
        yield f"{url}/v1"


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """vLLM's own virtual environment, created by deploy/vllm-env.sh if it is not there (CI does this)."""
    venv = default_venv()
    started = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "deploy" / "vllm-env.sh")], env={**os.environ,
                          "CITELINE_VLLM_VENV": str(venv)}, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        pytest.fail(f"deploy/vllm-env.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    print(f"\n[vllm] environment ready in {time.monotonic() - started:.1f} s ({venv})")
    return venv


@pytest.fixture(scope="module")
def server(tmp_path_factory, pg_url, embedder) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("srv"), pg_url, embedder) as srv:
        yield srv
