"""LoRA adapters: the manifest citeline writes beside a PEFT adapter, and the preflight before any load.

An adapter folder is a standard PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
what vLLM's ``/v1/load_lora_adapter`` and the embedded backend load) plus, when citeline trained it,
``citeline_adapter.json`` (:class:`AdapterManifest`): the base model's name and fingerprint, rank, target
modules, a hash of the training data and the evaluation metrics.

:func:`preflight` checks a folder against the server that is to load it and returns every problem it finds
as data (:class:`AdapterProblem`, an empty list = fit to load); it raises nothing for a bad adapter. It reads
JSON and the safetensors header only: no torch, no weights in memory.

An adapter folder may come from someone who should not be able to read the registering admin's files, so
every file citeline reads or copies from it (:data:`ADAPTER_FILES`) must be a regular file in the folder: a
symbolic link, pipe or device is a problem naming it (files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and
checked on the descriptor, :func:`open_regular`). ``adapter_config.json`` and the manifest are size-capped
(:data:`MAX_JSON_BYTES`) and every field citeline or the model server reads is type-checked, with a message
naming the field, its value and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat as st
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS",
    "LLAMA_MODULES",
    "MANIFEST",
    "MAX_JSON_BYTES",
    "AdapterManifest",
    "AdapterProblem",
    "Problem",
    "base_model_fingerprint",
    "open_regular",
    "preflight",
    "read_json",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "citeline_adapter.json"
# every file registration reads or copies from an adapter folder
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, "README.md", "citeline_eval.json",
                 "citeline_training.json")
MAX_JSON_BYTES = 1_000_000  # adapter_config.json and the manifest are a few hundred bytes
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SAVE_AGAIN = "fix the file, or save the adapter again with peft's save_pretrained"
# the linear layers of a Llama-style decoder (SmolLM2, Llama, Mistral, Qwen2) that a LoRA may target
LLAMA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# config.json keys that decide whether an adapter's weights fit a base model
_FINGERPRINT_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size")
_LORA_KEY = re.compile(r"\.layers\.(\d+)\.(?:[\w.]*\.)?(\w+)\.lora_([AB])\.weight$")


class Problem(StrEnum):
    NOT_A_FOLDER = "not_a_folder"
    NOT_AN_ADAPTER = "not_an_adapter"  # no or unreadable adapter_config.json
    NOT_A_REGULAR_FILE = "not_a_regular_file"  # a symlink, pipe or device where a file is read or copied
    BAD_CONFIG = "bad_config"  # a field of adapter_config.json of the wrong type or out of range
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
        try:
            raw = read_json(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"{path} cannot be read ({exc.strerror})") from exc
        problems = _type_problems(raw, _MANIFEST_FIELDS, MANIFEST,
                                  "run `citeline adapter train` again, or fix the file")
        if problems:
            raise ValueError(f"{path} is malformed: " + "; ".join(problems))
        return cls(base_model=raw["base_model"], base_fingerprint=raw["base_fingerprint"], rank=raw["rank"],
                   target_modules=tuple(raw["target_modules"]), team=raw.get("team"), data_hash=raw.get("data_hash"),
                   metrics={str(k): float(v) for k, v in (raw.get("metrics") or {}).items()})

    def write(self, adapter_dir: Path) -> Path:
        path = Path(adapter_dir) / MANIFEST
        body = {"base_model": self.base_model, "base_fingerprint": self.base_fingerprint, "rank": self.rank,
                "target_modules": list(self.target_modules), "team": self.team, "data_hash": self.data_hash,
                "metrics": dict(self.metrics)}
        path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        return path


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading without following a symlink; ``ValueError`` naming it unless a regular file.

    ``FileNotFoundError`` (an ``OSError``) when it does not exist. Never blocks on a named pipe.
    """
    path = Path(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise ValueError(f"{path.name} in {path.parent} is a symbolic link (to {os.readlink(path)!r}): an "
                         "adapter's files must be regular files in its folder; copy the file itself there") from None
    mode = os.fstat(fd).st_mode
    if not st.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{path.name} in {path.parent} is {_kind(mode)}, not a regular file: an adapter's files "
                         "must be regular files in its folder")
    return os.fdopen(fd, "rb")


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from a regular file of at most ``limit`` bytes; ``ValueError`` naming the problem and fix."""
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1)
    if size > limit or len(data) > limit:
        raise ValueError(f"{path.name} is {max(size, len(data))} bytes, over the limit of {limit} bytes for an "
                         f"adapter's JSON files: {_SAVE_AGAIN}")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(f"{path.name} is not valid JSON ({reason}{where}): {_SAVE_AGAIN}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} is a JSON {type(value).__name__}, not a JSON object: {_SAVE_AGAIN}")
    return value


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
    if unsafe := _file_problems(adapter_dir):
        return unsafe
    try:
        config = read_json(adapter_dir / ADAPTER_CONFIG)
    except FileNotFoundError:
        return [AdapterProblem(Problem.NOT_AN_ADAPTER, f"{adapter_dir} has no {ADAPTER_CONFIG}: save adapters with "
                               "peft's save_pretrained")]
    except (OSError, ValueError) as exc:
        return [AdapterProblem(Problem.NOT_AN_ADAPTER, f"{adapter_dir}/{ADAPTER_CONFIG} cannot be used: {exc}")]
    if bad := _type_problems(config, _CONFIG_FIELDS, ADAPTER_CONFIG, _SAVE_AGAIN):
        return [AdapterProblem(Problem.BAD_CONFIG, message) for message in bad]
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
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError, AttributeError) as exc:
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
    with open_regular(path) as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError("header too large")
        header = json.loads(f.read(length))
        size = os.fstat(f.fileno()).st_size
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise ValueError(f"the file is {size} bytes, its header describes {8 + length + end}")
    return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _file_problems(adapter_dir: Path) -> list[AdapterProblem]:
    """Each of :data:`ADAPTER_FILES` present in the folder that is not a regular file (a symlink, a pipe)."""
    problems = []
    for name in ADAPTER_FILES:
        path = adapter_dir / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if st.S_ISLNK(mode):
            problems.append(AdapterProblem(Problem.NOT_A_REGULAR_FILE, f"{name} in {adapter_dir} is a symbolic link "
                                           f"(to {os.readlink(path)!r}): registration reads and copies regular files "
                                           "only; put the file itself in the folder"))
        elif not st.S_ISREG(mode):
            problems.append(AdapterProblem(Problem.NOT_A_REGULAR_FILE, f"{name} in {adapter_dir} is {_kind(mode)}, "
                                           "not a regular file: remove it, or put the file itself in the folder"))
    return problems


_KINDS = ((st.S_ISLNK, "a symbolic link"), (st.S_ISFIFO, "a named pipe"), (st.S_ISSOCK, "a socket"),
          (st.S_ISCHR, "a character device"), (st.S_ISBLK, "a block device"), (st.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


# -- field types: (accepts the value, what it must be, an example) --------------------------------------

def _is_int(v: object, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_names(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _optional(test: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or test(v)


_Field = tuple[Callable[[object], bool], str, str]
_BOOL: _Field = (_optional(lambda v: isinstance(v, bool)), "true or false", "false")
_CONFIG_FIELDS: dict[str, _Field] = {
    "peft_type": (lambda v: isinstance(v, str), "a string", '"LORA"'),
    "r": (_is_int, "the LoRA rank: an integer, at least 1", "8"),
    "lora_alpha": (_optional(_is_num), "a number", "16"),
    "lora_dropout": (_optional(lambda v: _is_num(v) and 0 <= v <= 1), "a number from 0 to 1", "0.05"),
    "target_modules": (lambda v: isinstance(v, str) or _is_names(v), "a list of module names", '["q_proj", "v_proj"]'),
    "rank_pattern": (_optional(lambda v: isinstance(v, dict)), "an object of module name: rank", '{"q_proj": 8}'),
    "alpha_pattern": (_optional(lambda v: isinstance(v, dict)), "an object of module name: alpha", '{"q_proj": 16}'),
    "modules_to_save": (_optional(_is_names), "a list of module names, or null", "null"),
    "layers_to_transform": (_optional(lambda v: _is_int(v, 0) or (isinstance(v, list) and all(_is_int(x, 0)
                            for x in v))), "a layer index or a list of them, or null", "null"),
    "base_model_name_or_path": (_optional(lambda v: isinstance(v, str)), "a string", '"HuggingFaceTB/SmolLM2-135M"'),
    "bias": (_optional(lambda v: v in ("none", "all", "lora_only")), '"none", "all" or "lora_only"', '"none"'),
    "task_type": (_optional(lambda v: isinstance(v, str)), "a string", '"CAUSAL_LM"'),
    "use_dora": _BOOL, "use_rslora": _BOOL, "fan_in_fan_out": _BOOL, "inference_mode": _BOOL,
}
_REQUIRED = frozenset({"peft_type", "r", "target_modules", "base_model", "base_fingerprint", "rank"})
# entries of these objects: module name -> value
_ENTRY_FIELDS: dict[str, _Field] = {
    "rank_pattern": (_is_int, "an integer, at least 1", "8"),
    "alpha_pattern": (_is_num, "a number", "16"),
    "metrics": (_is_num, "a number", "0.9"),
}
_MANIFEST_FIELDS: dict[str, _Field] = {
    "base_model": (lambda v: isinstance(v, str) and bool(v), "a model name", '"SmolLM2-135M-Instruct"'),
    "base_fingerprint": (lambda v: isinstance(v, str) and bool(v), "the base model's fingerprint", '"<sha256>"'),
    "rank": (_is_int, "an integer, at least 1", "8"),
    "target_modules": (_is_names, "a list of module names", '["q_proj", "v_proj"]'),
    "team": (_optional(lambda v: isinstance(v, str)), "a string or null", '"support"'),
    "data_hash": (_optional(lambda v: isinstance(v, str)), "a string or null", "null"),
    "metrics": (_optional(lambda v: isinstance(v, dict)), "an object of name: number", '{"format_compliance": 0.9}'),
}


def _type_problems(data: dict[str, Any], fields: dict[str, _Field], file: str, fix: str) -> list[str]:
    """One message per field of the wrong type (naming the file, the field, the value and the fix)."""
    problems = []
    for key, (accepts, want, example) in fields.items():
        if key not in data:
            if key in _REQUIRED:
                problems.append(f'{file}: "{key}" is missing; it must be {want} (e.g. "{key}": {example}): {fix}')
            continue
        value = data[key]
        if not accepts(value):
            problems.append(f'{file}: "{key}" is {value!r}, it must be {want} (e.g. "{key}": {example}): {fix}')
        elif key in _ENTRY_FIELDS and isinstance(value, dict):
            entry_ok, entry_want, entry_example = _ENTRY_FIELDS[key]
            problems += [f'{file}: "{key}" entry "{name}" is {item!r}, it must be {entry_want} (e.g. "{key}": '
                         f'{{"{name}": {entry_example}}}): {fix}' for name, item in value.items() if not entry_ok(item)]
    return problems
