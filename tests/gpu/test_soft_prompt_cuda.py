"""Soft prompts on a CUDA GPU: trained there by the same loop, and served by the embedded backend on that device
(the virtual tokens' embeddings go to the model's device and dtype before the prefill). CI has no GPU: run where
one is, ``pytest -m gpu tests/gpu`` (CITELINE_TINY_BASE may name a prebuilt tiny model folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from citeline.contracts.generator import ChatMessage, GenerationRequest
from citeline.lora.manifest import preflight
from citeline.lora.training import TrainingConfig, train_adapter
from tests.unit.test_adapter_data import chat, write

torch = pytest.importorskip("torch")


def test_a_soft_prompt_trains_and_serves_on_the_gpu(tiny_base: Path, tmp_path: Path):
    from citeline.generation.local import EmbeddedBackend
    from citeline.settings import GenerationSettings

    data = write(tmp_path, [chat(i) for i in range(22)])
    result = train_adapter(TrainingConfig(team="support", data=data, output=tmp_path / "soft", base_model=tiny_base,
                                          epochs=3, virtual_tokens=8, learning_rate=0.1))
    assert result.heldout_loss is not None and result.base_heldout_loss is not None
    assert result.heldout_loss < result.base_heldout_loss
    assert preflight(tmp_path / "soft", base_model_dir=tiny_base, max_rank=8) == []
    backend = EmbeddedBackend(EmbeddedBackend.Config(model=str(tiny_base), engine="transformers", device="cuda"),
                              home=tmp_path, generation=GenerationSettings())
    backend.load_adapter("soft", tmp_path / "soft")
    assert backend._hosting.activate("soft").embeddings.device.type == "cuda"  # type: ignore[union-attr]
    texts = {}
    for model in (None, "soft"):
        request = GenerationRequest((ChatMessage("user", "What is the refund policy?"),), model=model,
                                    max_tokens=10, temperature=0.0)
        texts[model] = backend.generate(request).text
        assert "".join(backend.stream(request)) == texts[model]
    assert texts["soft"] != texts[None]
    backend.close()
