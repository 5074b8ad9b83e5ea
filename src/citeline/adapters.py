"""LoRA adapters: the manifest citeline writes beside a PEFT adapter, and the preflight before any load.

An adapter folder is a standard PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
what vLLM's ``/v1/load_lora_adapter`` and the embedded backend load) plus, when citeline trained it,
``citeline_adapter.json`` (:class:`AdapterManifest`): the base model's name and fingerprint, rank, target
modules, a hash of the training data and the evaluation metrics.

:func:`preflight` checks a folder against the server that is to load it and returns every problem it finds
as data (:class:`AdapterProblem`, an empty list = fit to load); it raises nothing for a bad adapter. It reads
JSON and the safetensors header only: no torch, no weights in memory.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LLAMA_MODULES",
    "MANIFEST",
    "AdapterManifest",
    "AdapterProblem",
    "Problem",
    "base_model_fingerprint",
    "preflight",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "citeline_adapter.json"
# the linear layers of a Llama-style decoder (SmolLM2, Llama, Mistral, Qwen2) that a LoRA may target
LLAMA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# config.json keys that decide whether an adapter's weights fit a base model
_FINGERPRINT_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size")
_LORA_KEY = re.compile(r"\.layers\.(\d+)\.(?:[\w.]*\.)?(\w+)\.lora_([AB])\.weight$")


class Problem(StrEnum):
    NOT_A_FOLDER = "not_a_folder"
    NOT_AN_ADAPTER = "not_an_adapter"  # no or unreadable adapter_config.json
    NOT_LORA = "not_lora"  # another PEFT method, or DoRA
    BAD_MANIFEST = "bad_manifest"
    BASE_MISMATCH = "base_mismatch"
    RANK_TOO_HIGH = "rank_too_high"
    UNSUPPORTED_MODULES = "unsupported_modules"
    MODULES_TO_SAVE = "modules_to_save"  # lm_head / embeddings (or anything) trained in full
    WEIGHTS_MISSING = "weights_missing"
    WEIGHTS_MISMATCH = "weights_mismatch"  # shapes, layers or modules that do not fit the config / base


@dataclass(frozen=True)
class AdapterProblem:
    kind: Problem
    message: str


@dataclass(frozen=True)
class AdapterManifest:
    """``citeline_adapter.json``: what the adapter was trained on and from."""

    base_model: str
    base_fingerprint: str
    rank: int
    target_modules: tuple[str, ...]
    team: str | None = None
    data_hash: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def read(cls, adapter_dir: Path) -> AdapterManifest | None:
        """The folder's manifest, or ``None`` when it has none. Raises ``ValueError`` when it is malformed."""
        path = Path(adapter_dir) / MANIFEST
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(base_model=str(raw["base_model"]), base_fingerprint=str(raw["base_fingerprint"]),
                       rank=int(raw["rank"]), target_modules=tuple(raw["target_modules"]),
                       team=raw.get("team"), data_hash=raw.get("data_hash"),
                       metrics={str(k): float(v) for k, v in (raw.get("metrics") or {}).items()})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is malformed: {exc!r}") from exc

    def write(self, adapter_dir: Path) -> Path:
        path = Path(adapter_dir) / MANIFEST
        body = {"base_model": self.base_model, "base_fingerprint": self.base_fingerprint, "rank": self.rank,
                "target_modules": list(self.target_modules), "team": self.team, "data_hash": self.data_hash,
                "metrics": dict(self.metrics)}
        path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        return path


def base_model_fingerprint(base_model_dir: Path) -> str:
    """sha256 of the architecture keys of the base model's config.json (what decides if LoRA weights fit)."""
    config = json.loads((Path(base_model_dir) / "config.json").read_text())
    picked = {k: config.get(k) for k in _FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def preflight(adapter_dir: Path, *, base_model_dir: Path, max_rank: int,
              supported_modules: Iterable[str] = LLAMA_MODULES) -> list[AdapterProblem]:
    """Every reason the adapter must not be loaded on a server of ``base_model_dir`` with ``max_rank``."""
    adapter_dir, base_model_dir = Path(adapter_dir), Path(base_model_dir)
    if not adapter_dir.is_dir():
        return [AdapterProblem(Problem.NOT_A_FOLDER, f"{adapter_dir} is not a folder")]
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return [AdapterProblem(Problem.NOT_AN_ADAPTER, f"{adapter_dir} has no readable {ADAPTER_CONFIG} "
                               f"({exc}); save adapters with peft's save_pretrained")]
    base = json.loads((base_model_dir / "config.json").read_text())
    problems = _config_problems(config, max_rank, frozenset(supported_modules))
    problems += _base_problems(adapter_dir, config, base_model_dir)
    if not any(p.kind in (Problem.NOT_LORA, Problem.UNSUPPORTED_MODULES) for p in problems):
        problems += _weight_problems(adapter_dir, config, base)
    return problems


def _config_problems(config: dict[str, Any], max_rank: int, supported: frozenset[str]) -> list[AdapterProblem]:
    problems = []
    if config.get("peft_type") != "LORA":
        return [AdapterProblem(Problem.NOT_LORA, f"peft_type is {config.get('peft_type')!r}, not 'LORA'")]
    if config.get("use_dora"):
        problems.append(AdapterProblem(Problem.NOT_LORA, "DoRA adapters are not supported by vLLM"))
    ranks = [int(config.get("r", 0)), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    if max(ranks) > max_rank:
        problems.append(AdapterProblem(Problem.RANK_TOO_HIGH, f"rank {max(ranks)} is above the server's "
                                       f"--max-lora-rank {max_rank}"))
    targets = config.get("target_modules")
    if isinstance(targets, str) or not targets:
        problems.append(AdapterProblem(Problem.UNSUPPORTED_MODULES, f"target_modules must be a list of module "
                                       f"names, not {targets!r}"))
    elif unsupported := sorted(set(targets) - supported):
        problems.append(AdapterProblem(Problem.UNSUPPORTED_MODULES, f"target modules {unsupported} are not "
                                       f"supported (supported: {sorted(supported)})"))
    if saved := config.get("modules_to_save"):
        problems.append(AdapterProblem(Problem.MODULES_TO_SAVE, f"modules_to_save {list(saved)} trains whole "
                                       "layers (lm_head, embeddings); vLLM serves LoRA deltas only"))
    return problems


def _base_problems(adapter_dir: Path, config: dict[str, Any], base_model_dir: Path) -> list[AdapterProblem]:
    try:
        manifest = AdapterManifest.read(adapter_dir)
    except ValueError as exc:
        return [AdapterProblem(Problem.BAD_MANIFEST, str(exc))]
    if manifest is not None:
        if manifest.base_fingerprint != base_model_fingerprint(base_model_dir):
            return [AdapterProblem(Problem.BASE_MISMATCH, f"trained on {manifest.base_model!r}, whose "
                                   f"architecture differs from the server's {base_model_dir.name!r}")]
        return []
    recorded = str(config.get("base_model_name_or_path") or "")
    if Path(recorded).name != base_model_dir.name:  # a hub id's last part or a local folder's name
        return [AdapterProblem(Problem.BASE_MISMATCH, f"trained on {recorded or 'an unrecorded base model'!r}, "
                               f"the server runs {base_model_dir.name!r}")]
    return []


def _weight_problems(adapter_dir: Path, config: dict[str, Any], base: dict[str, Any]) -> list[AdapterProblem]:
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        return [AdapterProblem(Problem.WEIGHTS_MISSING, f"{weights.name} is missing from {adapter_dir}")]
    try:
        shapes = _safetensors_shapes(weights)
    except (OSError, ValueError, struct.error) as exc:
        return [AdapterProblem(Problem.WEIGHTS_MISSING, f"{weights.name} is unreadable or truncated ({exc})")]
    dims = _module_dims(base)
    rank_of = {**{m: int(config["r"]) for m in config["target_modules"]},
               **{k: int(v) for k, v in (config.get("rank_pattern") or {}).items()}}
    problems, seen = [], set()
    for key, shape in shapes.items():
        match = _LORA_KEY.search(key)
        if not match:
            problems.append(AdapterProblem(Problem.WEIGHTS_MISMATCH, f"unexpected tensor {key!r}"))
            continue
        layer, module, which = int(match[1]), match[2], match[3]
        seen.add(module)
        if module not in rank_of or layer >= int(base["num_hidden_layers"]):
            problems.append(AdapterProblem(Problem.WEIGHTS_MISMATCH, f"{key!r} is not a target module of a "
                                           "layer the base model has"))
            continue
        in_dim, out_dim = dims[module]
        want = [rank_of[module], in_dim] if which == "A" else [out_dim, rank_of[module]]
        if shape != want:
            problems.append(AdapterProblem(Problem.WEIGHTS_MISMATCH, f"{key!r} has shape {shape}, the base "
                                           f"model needs {want}"))
    if missing := sorted(set(config["target_modules"]) - seen):
        problems.append(AdapterProblem(Problem.WEIGHTS_MISSING, f"no weights for target modules {missing}"))
    return problems


def _module_dims(base: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Llama-style linear layer."""
    hidden, inter = int(base["hidden_size"]), int(base["intermediate_size"])
    heads = int(base["num_attention_heads"])
    head_dim = int(base.get("head_dim") or hidden // heads)
    kv = int(base.get("num_key_value_heads") or heads) * head_dim
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name → shape from a safetensors header (8-byte little-endian length, then JSON)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError("header too large")
        header = json.loads(f.read(length))
        size = path.stat().st_size
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise ValueError(f"the file is {size} bytes, its header describes {8 + length + end}")
    return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
