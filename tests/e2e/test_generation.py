"""Real generation: the embedded SmolLM2 behind `citeline serve`, and the openai backend over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from citeline.contracts.generator import ChatMessage, GenerationRequest
from citeline.errors import GenerationError
from citeline.generation.openai import OpenAIBackend
from citeline.settings import GenerationSettings
from tests.e2e.conftest import embedded_model_server, free_port, run_server
from tests.support.adapters import make_adapter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPLOY = "how do I roll back a bad deploy"


@pytest.fixture(scope="module")
def model_server(smollm2_dir, tmp_path_factory) -> Iterator[str]:
    """`citeline model-server` with the embedded backend on loopback."""
    with embedded_model_server(smollm2_dir, tmp_path_factory.mktemp("ms")) as url:
        yield url


def test_openai_backend_against_the_model_server(model_server, smollm2_dir):
    backend = OpenAIBackend(OpenAIBackend.Config(base_url=model_server, model=smollm2_dir.name, retries=0),
                            generation=GenerationSettings(timeout_s=120))
    request = GenerationRequest((ChatMessage("system", "Answer in one short sentence."),
                                 ChatMessage("user", "What is the capital of France?")), max_tokens=12)
    whole = backend.generate(request)
    assert "Paris" in whole.text and whole.completion_tokens > 0
    assert "".join(backend.stream(request)) == whole.text  # greedy: the stream is the same text
    local = OpenAIBackend(OpenAIBackend.Config(base_url=model_server, model=smollm2_dir.name,
                                               tokenizer=str(smollm2_dir)))
    text = "Evidence [1] Deploy process: roll back with ship rollback."
    assert backend.count_tokens(text) == local.count_tokens(text) > 5  # server /tokenize == local tokenizer
    assert backend.models()[0] == smollm2_dir.name
    with pytest.raises(GenerationError, match="not served"):
        backend.generate(GenerationRequest(request.messages, model="no-such-adapter", max_tokens=4))


def test_model_server_hot_swaps_adapters_and_keeps_the_old_one_when_a_replacement_fails(model_server, smollm2_dir,
                                                                                       tmp_path):
    from citeline.lora.rollout import ReplicaClient

    good = make_adapter(smollm2_dir, tmp_path / "good", seed=5)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 16)  # truncated weights
    replica = ReplicaClient(model_server)
    try:
        replica.load_adapter("team-x", good)
        assert set(replica.adapters()) == {"team-x"}
        r = httpx.post(f"{replica.base_url}/v1/load_lora_adapter", timeout=120,
                       json={"lora_name": "team-x", "lora_path": str(broken), "load_inplace": True})
        assert r.status_code in (400, 404), r.text
        assert set(replica.adapters()) == {"team-x"}  # the old version still serves
        backend = OpenAIBackend(OpenAIBackend.Config(base_url=model_server, model=smollm2_dir.name, retries=0),
                                generation=GenerationSettings(timeout_s=120))
        assert backend.generate(GenerationRequest((ChatMessage("user", "Hi"),), model="team-x", max_tokens=4)).text
        r = httpx.post(f"{replica.base_url}/v1/load_lora_adapter", timeout=120,
                       json={"lora_name": "team-x", "lora_path": str(good), "load_inplace": True})
        assert r.status_code == 200 and set(replica.adapters()) == {"team-x"}
    finally:
        replica.unload_adapter("team-x")
        replica.close()
    assert replica_adapters_after_close(model_server) == set()


def replica_adapters_after_close(url: str) -> set[str]:
    data = httpx.get(f"{url.removesuffix('/v1')}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in data if m.get("parent")}


def test_openai_backend_names_the_server_when_it_is_down():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(OpenAIBackend.Config(base_url=dead, model="m", retries=1),
                            generation=GenerationSettings(timeout_s=5))
    with pytest.raises(GenerationError, match="cannot reach the model server"):
        backend.generate(GenerationRequest((ChatMessage("user", "hi"),), max_tokens=4))


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory, pg_url, embedder, smollm2_dir):
    env = {"CITELINE_GENERATION__OPTIONS__MODEL": str(smollm2_dir), "CITELINE_GENERATION__MAX_TOKENS": "40"}
    with run_server(tmp_path_factory.mktemp("emb"), pg_url, embedder, backend="embedded", extra_env=env) as srv:
        yield srv


def test_embedded_model_answers_through_the_server_streaming_and_not(embedded_server):
    srv = embedded_server
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=srv.keys["alice"], max_retries=0, timeout=300)
    resp = client.chat.completions.create(model="citeline", messages=[{"role": "user", "content": DEPLOY}])
    extra = resp.model_extra or {}
    assert extra["refused"] is False and resp.choices[0].message.content.strip()
    sources = extra["sources"]
    assert any(s["external_id"] == "engineering/deploy-process.md" for s in sources)
    assert {c["n"] for c in extra["citations"]} <= {s["n"] for s in sources}
    chunks = list(client.chat.completions.create(model="citeline", stream=True,
                                                 messages=[{"role": "user", "content": DEPLOY}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Both are verified; they need not be equal: a stream releases verified sentences as they come and
    # cannot take them back, while a whole answer falls back when fewer than half its claims hold.
    last = chunks[-1].model_extra or {}
    assert extra["verified"] is True and last["verified"] is True
    for text, fell_back in ((streamed, last["fallback"]), (resp.choices[0].message.content, extra["fallback"])):
        if fell_back:  # the extractive answer from the runbook
            assert "acme-deploy rollback fleet" in text, text
    if extra["fallback"] and last["fallback"]:
        assert streamed.strip() == resp.choices[0].message.content.strip()  # the same extractive answer
    (row,) = srv.owner_sql("SELECT payload->>'model' FROM audit_log WHERE id = %s", extra["audit_id"])
    assert row[0] == "smollm2-135m-instruct"


def test_planted_instruction_with_a_real_model(embedded_server):
    srv = embedded_server
    r = httpx.post(f"{srv.url}/v1/ask", json={"question": "how do I set up the office printer"},
                   headers={"Authorization": f"Bearer {srv.keys['bob']}"}, timeout=300)
    body = r.json()
    assert r.status_code == 200 and not body["refused"]
    assert any(s["external_id"] == "office-printer.md" for s in body["sources"])
    hr = {row[0] for row in srv.owner_sql("SELECT id FROM documents WHERE external_id LIKE 'hr/%%'")}
    assert not hr & {s["document_id"] for s in body["sources"]}  # the planted request cannot widen access
    for secret in ("£48,000", "£62,000", "£80,000", "E3 (senior engineer)"):  # real bands: never in evidence
        assert secret not in body["answer"]
    assert "[9]" not in body["answer"] and all(c["n"] <= len(body["sources"]) for c in body["citations"])


def test_model_server_honours_stop_and_reports_the_finish_reason(model_server, smollm2_dir):
    backend = OpenAIBackend(OpenAIBackend.Config(base_url=model_server, model=smollm2_dir.name, retries=0,
                                                 tokenizer=str(smollm2_dir)), generation=GenerationSettings(timeout_s=120))
    ask = (ChatMessage("user", "Count from one to ten in words, separated by commas."),)
    short = backend.generate(GenerationRequest(ask, max_tokens=3))
    assert short.finish_reason == "length" and short.completion_tokens == 3
    stream = backend.stream(GenerationRequest(ask, max_tokens=3))
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            assert end.value == "length"  # the stream returns the server's finish reason
            break
    assert "".join(pieces) == short.text
    whole = backend.generate(GenerationRequest(ask, max_tokens=40))
    word = next(w for w in ("three", "Three", "3") if w in whole.text)
    cut = backend.generate(GenerationRequest(ask, max_tokens=40, stop=(word,)))
    assert word not in cut.text and cut.finish_reason == "stop" and whole.text.startswith(cut.text.rstrip())
