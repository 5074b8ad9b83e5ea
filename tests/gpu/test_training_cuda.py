"""Adapter training on a CUDA GPU: the path `citeline adapter train` takes on a GPU machine (CI has none).

The tiny Llama of the integration tests (random weights, SmolLM2's tokenizer) trained on the GPU: the model and
its batches live there, an interrupted run resumes to the result of a straight one, the adapter it writes is the
same servable PEFT folder as on a CPU and loads on a CPU, and the first losses agree with a CPU run of the same
seed. Run where a GPU is: ``pytest -m gpu tests/gpu`` (CITELINE_TINY_BASE may name a prebuilt tiny model folder,
for a machine without the SmolLM2 package). Everywhere else the module is skipped as a whole.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from citeline.lora.manifest import ADAPTER_WEIGHTS, preflight
from citeline.lora.training import TrainingConfig, qlora_missing, train_adapter
from tests.unit.test_adapter_data import chat, write

torch = pytest.importorskip("torch")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write(tmp_path, [chat(i) for i in range(22)])


def config(tiny_base: Path, data: Path, output: Path, **kw) -> TrainingConfig:
    return TrainingConfig(**{"team": "support", "data": data, "output": output, "base_model": tiny_base,
                             "epochs": 2, "batch_size": 4, "save_every": 2, **kw})


def test_trains_on_the_gpu_into_a_servable_adapter(tiny_base: Path, data: Path, tmp_path: Path):
    from safetensors.torch import load_file

    torch.cuda.reset_peak_memory_stats()
    result = train_adapter(config(tiny_base, data, tmp_path / "support"))
    assert result.completed and result.step == result.total_steps == 10
    assert torch.cuda.max_memory_allocated() > 0  # the model and its batches were on the GPU
    assert result.heldout_loss is not None and result.base_heldout_loss is not None
    assert all(x == x and x < 100 for x in result.losses)  # finite
    assert preflight(tmp_path / "support", base_model_dir=tiny_base, max_rank=8) == []
    weights = load_file(str(tmp_path / "support" / ADAPTER_WEIGHTS))  # loads on a CPU: nothing pinned to cuda
    assert weights and all(t.device.type == "cpu" for t in weights.values())


def test_interrupted_run_resumes_to_the_straight_result_on_the_gpu(tiny_base: Path, data: Path, tmp_path: Path):
    from safetensors.torch import load_file

    straight = train_adapter(config(tiny_base, data, tmp_path / "straight"))
    stop = threading.Event()
    out = tmp_path / "resumed"
    first = train_adapter(config(tiny_base, data, out), progress=lambda p: p.step == 3 and stop.set(), stop=stop)
    assert not first.completed and first.step == 3
    second = train_adapter(config(tiny_base, data, out))
    assert second.completed and second.resumed_from == 3
    assert second.losses == pytest.approx(straight.losses, rel=1e-4)
    a = load_file(str(out / ADAPTER_WEIGHTS))
    b = load_file(str(tmp_path / "straight" / ADAPTER_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_gpu_and_cpu_runs_of_one_seed_agree(tiny_base: Path, data: Path, tmp_path: Path):
    """The same seed gives the same first steps on either device (float32 both; later steps drift apart slowly)."""
    gpu = train_adapter(config(tiny_base, data, tmp_path / "gpu", epochs=1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)  # the trainer picks its device with this call
        cpu = train_adapter(config(tiny_base, data, tmp_path / "cpu", epochs=1))
    assert gpu.losses[:3] == pytest.approx(cpu.losses[:3], rel=1e-3)
    assert gpu.heldout_loss == pytest.approx(cpu.heldout_loss, rel=1e-2)


def test_qlora_on_a_gpu_names_only_what_is_missing(tiny_base: Path, data: Path, tmp_path: Path):
    missing = qlora_missing()
    assert not any("CUDA GPU" in m for m in missing)  # the GPU is there
    if missing:  # bitsandbytes absent: the error names it and nothing is written
        with pytest.raises(Exception, match="bitsandbytes"):
            train_adapter(config(tiny_base, data, tmp_path / "q", qlora=True))
        assert not (tmp_path / "q").exists()
    else:
        result = train_adapter(config(tiny_base, data, tmp_path / "q", qlora=True, epochs=1))
        assert result.completed and preflight(tmp_path / "q", base_model_dir=tiny_base, max_rank=8) == []


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    """Preference pairs as `adapter data from-feedback` writes them (as in tests/integration/test_feedback_dpo.py,
    whose module imports the CLI and its server stack, which a bare GPU machine may lack)."""
    from citeline.lora.feedback_data import EvidenceChunk, RatedAnswer, build_feedback_data

    topics = ["returns", "warranty", "batteries", "firmware", "docks", "grippers", "invoices", "refunds"]

    chunks = {i: EvidenceChunk(i, i, f"{t} policy", None, f"{t.title()} are handled by desk {i}.")
              for i, t in enumerate(topics)}
    rated = [RatedAnswer(2 * i, "support", "base", -1, "no citation", f"- Desk {i} [1].\nNext step: go.",
                         f"Who handles {t}?", f"I think it is probably some desk somewhere, {t} maybe.", (i,))
             for i, t in enumerate(topics)]
    return build_feedback_data("support", rated, chunks, frozenset(chunks), heldout=0.0).write(tmp_path / "fb")["pairs"]


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_dpo_continues_an_adapter_on_the_gpu(tiny_base: Path, data: Path, pairs: Path, tmp_path: Path, qlora: bool):
    """The feedback loop's training on a GPU: SFT, then SFT continued from it, then DPO from it (4-bit base with
    --qlora when bitsandbytes is there; else the error names it and nothing is written)."""
    from citeline.lora.preference import train_dpo

    first = train_adapter(config(tiny_base, data, tmp_path / "first", epochs=1))
    assert first.completed
    if qlora and qlora_missing():
        with pytest.raises(Exception, match="bitsandbytes"):
            train_dpo(config(tiny_base, pairs, tmp_path / "dpo", qlora=True), start_from=tmp_path / "first")
        assert not (tmp_path / "dpo").exists()
        return
    torch.cuda.reset_peak_memory_stats()
    more = train_adapter(config(tiny_base, data, tmp_path / "more", epochs=1, qlora=qlora,
                                start_from=tmp_path / "first"))
    assert more.completed and more.heldout_loss < more.base_heldout_loss
    assert more.manifest is not None and "start_heldout_loss" in more.manifest.metrics
    dpo = train_dpo(config(tiny_base, pairs, tmp_path / "dpo", epochs=3, heldout=0.25, learning_rate=5e-3,
                           qlora=qlora), start_from=tmp_path / "more")
    assert torch.cuda.max_memory_allocated() > 0
    assert dpo.completed and dpo.heldout_loss < dpo.base_heldout_loss  # prefers the chosen answers more
    for out in ("more", "dpo"):
        assert preflight(tmp_path / out, base_model_dir=tiny_base, max_rank=8) == []
