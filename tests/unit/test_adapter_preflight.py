"""Preflight of LoRA adapters: a real peft adapter on a tiny Llama built here, and one broken copy per kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from citeline.lora.manifest import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterManifest,
    Problem,
    base_model_fingerprint,
    llama_linear_shapes,
    lora_shape_problems,
    preflight,
)
from citeline.lora.safetensors_header import safetensors_shapes

pytestmark = pytest.mark.unit

BASE_NAME = "tiny-llama"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 128, "max_position_embeddings": 64}


def _base(folder: Path, **changes: int) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(**{**TINY, **changes}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with random weights, saved like a real base model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / BASE_NAME
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft LoRA (r=8 on q_proj, k_proj, down_proj) of the tiny base, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)  # records the base's path
    tuned = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "down_proj"],
                                             task_type="CAUSAL_LM"))
    dest = tmp_path_factory.mktemp("adapter") / "team-a"
    tuned.save_pretrained(dest)
    return dest


def copy(adapter_dir: Path, dest: Path, **config_changes: object) -> Path:
    shutil.copytree(adapter_dir, dest)
    config = json.loads((dest / ADAPTER_CONFIG).read_text())
    config.update(config_changes)
    (dest / ADAPTER_CONFIG).write_text(json.dumps(config))
    return dest


def kinds(adapter: Path, base_dir: Path, max_rank: int = 16) -> set[Problem]:
    problems = preflight(adapter, base_model_dir=base_dir, max_rank=max_rank)
    assert all(p.message for p in problems)
    return {p.kind for p in problems}


def test_a_good_adapter_passes(adapter_dir: Path, base_dir: Path) -> None:
    assert preflight(adapter_dir, base_model_dir=base_dir, max_rank=8) == []


def test_each_bad_kind_is_reported(adapter_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    no_weights = copy(adapter_dir, tmp_path / "no-weights")
    (no_weights / ADAPTER_WEIGHTS).unlink()
    truncated = copy(adapter_dir, tmp_path / "truncated")
    data = (truncated / ADAPTER_WEIGHTS).read_bytes()
    (truncated / ADAPTER_WEIGHTS).write_bytes(data[: len(data) // 2])
    plain = tmp_path / "plain"
    plain.mkdir()
    cases = {
        "missing": (tmp_path / "gone", {Problem.NOT_A_FOLDER}),
        "plain": (plain, {Problem.NOT_AN_ADAPTER}),
        "prefix": (copy(adapter_dir, tmp_path / "prefix", peft_type="PREFIX_TUNING"), {Problem.NOT_LORA}),
        "dora": (copy(adapter_dir, tmp_path / "dora", use_dora=True), {Problem.NOT_LORA}),
        "lm_head target": (copy(adapter_dir, tmp_path / "lm-head", target_modules=["q_proj", "lm_head"]),
                           {Problem.UNSUPPORTED_MODULES}),
        "regex target": (copy(adapter_dir, tmp_path / "regex", target_modules=".*proj"),
                         {Problem.UNSUPPORTED_MODULES}),
        "modules_to_save": (copy(adapter_dir, tmp_path / "mts", modules_to_save=["lm_head", "embed_tokens"]),
                            {Problem.MODULES_TO_SAVE}),
        "other base": (copy(adapter_dir, tmp_path / "other", base_model_name_or_path="org/other-model"),
                       {Problem.BASE_MISMATCH}),
        "no weights": (no_weights, {Problem.WEIGHTS_MISSING}),
        "truncated": (truncated, {Problem.WEIGHTS_MISSING}),
        "weights lack a target": (copy(adapter_dir, tmp_path / "extra", target_modules=["q_proj", "k_proj",
                                                                                        "down_proj", "v_proj"]),
                                  {Problem.WEIGHTS_MISSING}),
    }
    for name, (path, expected) in cases.items():
        assert kinds(path, base_dir) == expected, name


def test_rank_above_the_server_max(adapter_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    assert kinds(adapter_dir, base_dir, max_rank=4) == {Problem.RANK_TOO_HIGH}
    patterned = copy(adapter_dir, tmp_path / "pattern", rank_pattern={"q_proj": 32})
    assert Problem.RANK_TOO_HIGH in kinds(patterned, base_dir)
    assert Problem.WEIGHTS_MISMATCH in kinds(patterned, base_dir, max_rank=64)  # q_proj weights are r=8


def test_same_name_other_shapes_is_caught_by_the_weights(adapter_dir: Path, tmp_path: Path) -> None:
    wider = _base(tmp_path / BASE_NAME, hidden_size=128)
    problems = preflight(adapter_dir, base_model_dir=wider, max_rank=16)
    assert {p.kind for p in problems} == {Problem.WEIGHTS_MISMATCH}
    assert "shape" in problems[0].message
    fewer_layers = _base(tmp_path / "short" / BASE_NAME, num_hidden_layers=1)
    assert kinds(adapter_dir, fewer_layers) == {Problem.WEIGHTS_MISMATCH}


def test_the_manifest_decides_the_base_when_present(adapter_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    renamed = copy(adapter_dir, tmp_path / "renamed", base_model_name_or_path="/elsewhere/tiny-llama-copy")
    assert kinds(renamed, base_dir) == {Problem.BASE_MISMATCH}
    manifest = AdapterManifest(base_model="tiny-llama-copy", base_fingerprint=base_model_fingerprint(base_dir),
                               rank=8, target_modules=("q_proj", "k_proj", "down_proj"), team="support",
                               data_hash="abc", metrics={"format_compliance": 0.9})
    manifest.write(renamed)
    assert AdapterManifest.read(renamed) == manifest
    assert kinds(renamed, base_dir) == set()  # same architecture fingerprint: fits

    wider = _base(tmp_path / "wider" / BASE_NAME, hidden_size=128)
    assert Problem.BASE_MISMATCH in kinds(renamed, wider)
    (renamed / "citeline_adapter.json").write_text('{"base_model": "x"}')
    assert kinds(renamed, base_dir) == {Problem.BAD_MANIFEST}
    assert AdapterManifest.read(adapter_dir) is None


# -- the one shape check: registration's preflight and the embedded backend used to disagree --------------


def _linear_of_loaded(base_dir: Path) -> dict[str, tuple[int, int]]:
    """What the embedded backend checks against: the loaded model's own linear layers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _weights(adapter: Path) -> dict[str, list[int]]:
    with (adapter / ADAPTER_WEIGHTS).open("rb") as f:
        return safetensors_shapes(f)


def test_config_json_and_the_loaded_model_give_the_same_layers(base_dir: Path) -> None:
    loaded = _linear_of_loaded(base_dir)
    assert llama_linear_shapes(json.loads((base_dir / "config.json").read_text())) == \
        {n: dims for n, dims in loaded.items() if n != "lm_head"}


def test_what_the_embedded_backend_let_through_is_refused_by_both(adapter_dir: Path, base_dir: Path,
                                                                  tmp_path: Path) -> None:
    """The backend's old check skipped tensors that were not LoRA matrices and took any rank when the config had
    a rank_pattern; the one check refuses both, whichever side gives the base model's shapes."""
    from safetensors.torch import load_file, save_file

    stray = copy(adapter_dir, tmp_path / "stray")
    tensors = load_file(stray / ADAPTER_WEIGHTS)
    tensors["base_model.model.lm_head.weight"] = next(iter(tensors.values())).clone()
    save_file(tensors, stray / ADAPTER_WEIGHTS)
    patterned = copy(adapter_dir, tmp_path / "pattern", rank_pattern={"q_proj": 4})  # its weights are r=8
    base = json.loads((base_dir / "config.json").read_text())
    for adapter, needle in ((stray, "unexpected tensor"), (patterned, "(r=4)")):
        config = json.loads((adapter / ADAPTER_CONFIG).read_text())
        for linear in (llama_linear_shapes(base), _linear_of_loaded(base_dir)):
            problems = lora_shape_problems(_weights(adapter), config, linear)
            assert {p.kind for p in problems} == {Problem.WEIGHTS_MISMATCH}, adapter.name
            assert needle in problems[0].message
        assert Problem.WEIGHTS_MISMATCH in kinds(adapter, base_dir)


def test_a_header_safetensors_refuses_is_refused_by_preflight_too(adapter_dir: Path, base_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Preflight used to read the header by hand and accept what ``safe_open`` (the backend's reader) refused."""
    from safetensors import safe_open

    data = (adapter_dir / ADAPTER_WEIGHTS).read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = list(reversed(header[name]["shape"]))  # same bytes, so only a transposed shape...
    header[name]["shape"][0] *= 2  # ...and then one that does not fit its bytes
    body = json.dumps(header).encode()
    lying = copy(adapter_dir, tmp_path / "lying")
    (lying / ADAPTER_WEIGHTS).write_bytes(len(body).to_bytes(8, "little") + body + data[8 + length:])
    padded = copy(adapter_dir, tmp_path / "padded")
    (padded / ADAPTER_WEIGHTS).write_bytes(data + b"\0" * 64)
    for adapter in (lying, padded):
        with pytest.raises(Exception, match="header"), safe_open(str(adapter / ADAPTER_WEIGHTS), framework="pt"):
            pass
        with pytest.raises(ValueError):
            _weights(adapter)
        assert kinds(adapter, base_dir) == {Problem.WEIGHTS_MISSING}, adapter.name


def test_rank_pattern_keys_match_as_in_peft(base_dir: Path, tmp_path: Path) -> None:
    """A rank_pattern naming one layer's module by path: peft gives that module its rank, and so does the check
    (registration used to expect ``r`` for every q_proj and refused this adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    tuned = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj"], task_type="CAUSAL_LM",
                                             rank_pattern={"model.layers.0.self_attn.q_proj": 4}))
    tuned.save_pretrained(tmp_path / "by-layer")
    shapes = _weights(tmp_path / "by-layer")
    assert shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == [4, 64]
    assert shapes["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"] == [8, 64]
    assert preflight(tmp_path / "by-layer", base_model_dir=base_dir, max_rank=8) == []
