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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from citeline.lora.config_fields import CONFIG_FIELDS, MANIFEST_FIELDS, is_int, type_problems
from citeline.lora.problems import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterProblem, Problem
from citeline.lora.safetensors_header import safetensors_shapes
from citeline.lora.soft_prompt import SOFT_PROMPT, embedding_problems, is_soft_prompt

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
    "llama_linear_shapes",
    "lora_shape_problems",
    "open_regular",
    "preflight",
    "read_json",
]

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
# a soft prompt's manifest: it has no rank and no target modules, and says so (0, [])
_SOFT_PROMPT_FIELDS = {**MANIFEST_FIELDS,
                       "rank": (lambda v: v == 0, "0 (a soft prompt has no rank)", "0"),
                       "target_modules": (lambda v: v == [], "[] (a soft prompt targets no module)", "[]"),
                       "virtual_tokens": (is_int, "the number of virtual tokens, at least 1", "20")}
# a LoRA matrix in a peft state dict: base_model.model.<module path>.lora_A.weight
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


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
    kind: str = "lora"  # or "soft_prompt" (rank 0, no target modules: :mod:`citeline.lora.soft_prompt`)
    virtual_tokens: int | None = None  # a soft prompt's length

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
        kind = raw.get("kind", "lora")
        fields = _SOFT_PROMPT_FIELDS if kind == "soft_prompt" else MANIFEST_FIELDS
        problems = type_problems(raw, fields, MANIFEST, "run `citeline adapter train` again, or fix the file")
        if kind not in ("lora", "soft_prompt"):
            problems.append(f'{MANIFEST}: "kind" is {kind!r}, it must be "lora" or "soft_prompt"')
        if problems:
            raise ValueError(f"{path} is malformed: " + "; ".join(problems))
        return cls(base_model=raw["base_model"], base_fingerprint=raw["base_fingerprint"], rank=raw["rank"],
                   target_modules=tuple(raw["target_modules"]), team=raw.get("team"), data_hash=raw.get("data_hash"),
                   metrics={str(k): float(v) for k, v in (raw.get("metrics") or {}).items()}, kind=kind,
                   virtual_tokens=raw.get("virtual_tokens"))

    def write(self, adapter_dir: Path) -> Path:
        path = Path(adapter_dir) / MANIFEST
        body = {"base_model": self.base_model, "base_fingerprint": self.base_fingerprint, "rank": self.rank,
                "target_modules": list(self.target_modules), "team": self.team, "data_hash": self.data_hash,
                "metrics": dict(self.metrics)}
        if self.kind != "lora":  # a LoRA manifest keeps the fields it always had
            body.update(kind=self.kind, virtual_tokens=self.virtual_tokens)
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
    base = json.loads((base_model_dir / "config.json").read_text())
    if is_soft_prompt(config):  # a peft prompt-tuning folder: its own checks
        return _soft_prompt_problems(adapter_dir, config, base_model_dir, base)
    if bad := type_problems(config, CONFIG_FIELDS, ADAPTER_CONFIG, _SAVE_AGAIN):
        return [AdapterProblem(Problem.BAD_CONFIG, message) for message in bad]
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
        with open_regular(weights) as f:
            shapes = safetensors_shapes(f)
    except (OSError, ValueError) as exc:
        return [AdapterProblem(Problem.WEIGHTS_MISSING, f"{weights.name} is unreadable or truncated ({exc})")]
    return lora_shape_problems(shapes, config, llama_linear_shapes(base))


def _soft_prompt_problems(adapter_dir: Path, config: dict[str, Any], base_model_dir: Path,
                          base: dict[str, Any]) -> list[AdapterProblem]:
    """A soft prompt's preflight: task type, manifest (kind, base fingerprint), weights against the hidden size."""
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        return [AdapterProblem(Problem.BAD_CONFIG, f"{ADAPTER_CONFIG}: task_type is {config.get('task_type')!r}; a "
                               "soft prompt for a chat model is CAUSAL_LM")]
    try:
        manifest = AdapterManifest.read(adapter_dir)
    except ValueError as exc:
        return [AdapterProblem(Problem.BAD_MANIFEST, str(exc))]
    problems = []
    if manifest is not None and manifest.kind != SOFT_PROMPT:
        problems.append(AdapterProblem(Problem.BAD_MANIFEST, f"the manifest says kind {manifest.kind!r}, the folder "
                                       "holds a soft prompt (peft_type PROMPT_TUNING): train it again"))
    if manifest is not None and manifest.base_fingerprint != base_model_fingerprint(base_model_dir):
        problems.append(AdapterProblem(Problem.BASE_MISMATCH, f"trained on {manifest.base_model!r}, whose "
                                       f"architecture differs from the server's {base_model_dir.name!r}"))
    try:
        with open_regular(adapter_dir / ADAPTER_WEIGHTS) as f:
            shapes = safetensors_shapes(f)
    except (OSError, ValueError) as exc:  # missing, truncated, forged header
        return [*problems, AdapterProblem(Problem.WEIGHTS_MISSING, f"{ADAPTER_WEIGHTS} in {adapter_dir} is missing, "
                                          f"unreadable or truncated ({exc})")]
    return problems + embedding_problems(config, shapes, int(base["hidden_size"]))


def llama_linear_shapes(base: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear layer a LoRA may target in a Llama-style model, from its config.json.

    Keyed by module path (``model.layers.0.self_attn.q_proj``), as ``named_modules()`` of the loaded model.
    """
    hidden, inter = int(base["hidden_size"]), int(base["intermediate_size"])
    heads = int(base["num_attention_heads"])
    head_dim = int(base.get("head_dim") or hidden // heads)
    kv = int(base.get("num_key_value_heads") or heads) * head_dim
    per_layer = {"self_attn.q_proj": (hidden, heads * head_dim), "self_attn.k_proj": (hidden, kv),
                 "self_attn.v_proj": (hidden, kv), "self_attn.o_proj": (heads * head_dim, hidden),
                 "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter), "mlp.down_proj": (inter, hidden)}
    return {f"model.layers.{i}.{module}": dims for i in range(int(base["num_hidden_layers"]))
            for module, dims in per_layer.items()}


def lora_shape_problems(shapes: Mapping[str, Sequence[int]], config: Mapping[str, Any],
                        linear: Mapping[str, tuple[int, int]]) -> list[AdapterProblem]:
    """The one LoRA shape check: each tensor of ``shapes`` (an adapter's weights) against the base model.

    ``config`` is the adapter's ``adapter_config.json``; ``linear`` maps each linear module path of the base
    model to its (in, out) features: :func:`llama_linear_shapes` of a config.json (registration's preflight)
    or the loaded model's own modules (the embedded backend). Every tensor must be a ``lora_A``/``lora_B``
    matrix of a module the base model has and the config targets, of shape ``[r, in]`` / ``[out, r]`` with
    ``r`` from ``rank_pattern`` (matched as peft matches it) or ``r``; every listed target needs weights.
    """
    r: Any = config.get("r")
    pattern = config.get("rank_pattern") or {}
    if not is_int(r) or not isinstance(pattern, dict) or not all(is_int(v) for v in pattern.values()):
        return [AdapterProblem(Problem.BAD_CONFIG, f"{ADAPTER_CONFIG}: r and rank_pattern must be integers of at "
                               f"least 1 (r is {r!r}): {_SAVE_AGAIN}")]
    targets = config.get("target_modules")
    listed = [str(t) for t in targets] if isinstance(targets, list) else None  # a string is a peft regex
    problems, seen = [], set()
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        if match is None:
            problems.append(AdapterProblem(Problem.WEIGHTS_MISMATCH, f"unexpected tensor {key!r} (not a LoRA "
                                           "lora_A or lora_B matrix)"))
            continue
        module = match["module"]
        if module not in linear or (listed is not None and not _targets(module, listed)):
            problems.append(AdapterProblem(Problem.WEIGHTS_MISMATCH, f"{key!r} is not a target module of a "
                                           "layer the base model has"))
            continue
        seen.add(module)
        rank = _rank_of(module, pattern, r)
        in_dim, out_dim = linear[module]
        want = [rank, in_dim] if match["ab"] == "A" else [out_dim, rank]
        if list(shape) != want:
            problems.append(AdapterProblem(Problem.WEIGHTS_MISMATCH, f"{key!r} has shape {list(shape)}, the base "
                                           f"model needs {want} (r={rank})"))
    if listed is not None and (missing := sorted(t for t in set(listed) if not any(_targets(m, [t]) for m in seen))):
        problems.append(AdapterProblem(Problem.WEIGHTS_MISSING, f"{ADAPTER_WEIGHTS} lacks weights for target "
                                       f"modules {missing}"))
    elif not seen:
        problems.append(AdapterProblem(Problem.WEIGHTS_MISSING, f"{ADAPTER_WEIGHTS} holds no LoRA weights"))
    return problems


def _targets(module: str, targets: Iterable[str]) -> bool:
    """peft's rule for a list of target modules: the module's path is one of them or ends in ``.name``."""
    return any(module == t or module.endswith(f".{t}") for t in targets)


def _rank_of(module: str, pattern: Mapping[str, int], r: int) -> int:
    """peft's rule: the first ``rank_pattern`` key that matches the end of the module's path, else ``r``."""
    for key, rank in pattern.items():
        try:
            hit = re.match(rf"(.*\.)?({key})$", module) is not None
        except re.error:
            hit = _targets(module, [key])
        if hit:
            return rank
    return r


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
