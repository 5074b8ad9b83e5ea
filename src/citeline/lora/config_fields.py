"""The fields of ``adapter_config.json`` and ``citeline_adapter.json`` that citeline or a model server reads.

Each is (accepts the value, what it must be, an example); :func:`type_problems` gives one message per field
of the wrong type, naming the file, the field, the value and the fix (:mod:`citeline.lora.manifest`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CONFIG_FIELDS", "MANIFEST_FIELDS", "is_int", "type_problems"]


# -- field types: (accepts the value, what it must be, an example) -------------------------------------------

def is_int(v: object, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_fraction(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1


def _is_names(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _optional(test: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or test(v)


_Field = tuple[Callable[[object], bool], str, str]
_BOOL: _Field = (_optional(lambda v: isinstance(v, bool)), "true or false", "false")
CONFIG_FIELDS: dict[str, _Field] = {
    "peft_type": (lambda v: isinstance(v, str), "a string", '"LORA"'),
    "r": (is_int, "the LoRA rank: an integer, at least 1", "8"),
    "lora_alpha": (_optional(_is_num), "a number", "16"),
    "lora_dropout": (_optional(_is_fraction), "a number from 0 to 1", "0.05"),
    "target_modules": (lambda v: isinstance(v, str) or _is_names(v), "a list of module names", '["q_proj", "v_proj"]'),
    "rank_pattern": (_optional(lambda v: isinstance(v, dict)), "an object of module name: rank", '{"q_proj": 8}'),
    "alpha_pattern": (_optional(lambda v: isinstance(v, dict)), "an object of module name: alpha", '{"q_proj": 16}'),
    "modules_to_save": (_optional(_is_names), "a list of module names, or null", "null"),
    "layers_to_transform": (_optional(lambda v: is_int(v, 0) or (isinstance(v, list) and all(is_int(x, 0)
                            for x in v))), "a layer index or a list of them, or null", "null"),
    "base_model_name_or_path": (_optional(lambda v: isinstance(v, str)), "a string", '"HuggingFaceTB/SmolLM2-135M"'),
    "bias": (_optional(lambda v: v in ("none", "all", "lora_only")), '"none", "all" or "lora_only"', '"none"'),
    "task_type": (_optional(lambda v: isinstance(v, str)), "a string", '"CAUSAL_LM"'),
    "use_dora": _BOOL, "use_rslora": _BOOL, "fan_in_fan_out": _BOOL, "inference_mode": _BOOL,
}
_REQUIRED = frozenset({"peft_type", "r", "target_modules", "base_model", "base_fingerprint", "rank"})
# entries of these objects: module name -> value
_ENTRY_FIELDS: dict[str, _Field] = {
    "rank_pattern": (is_int, "an integer, at least 1", "8"),
    "alpha_pattern": (_is_num, "a number", "16"),
    "metrics": (_is_num, "a number", "0.9"),
}
MANIFEST_FIELDS: dict[str, _Field] = {
    "base_model": (lambda v: isinstance(v, str) and bool(v), "a model name", '"SmolLM2-135M-Instruct"'),
    "base_fingerprint": (lambda v: isinstance(v, str) and bool(v), "the base model's fingerprint", '"<sha256>"'),
    "rank": (is_int, "an integer, at least 1", "8"),
    "target_modules": (_is_names, "a list of module names", '["q_proj", "v_proj"]'),
    "team": (_optional(lambda v: isinstance(v, str)), "a string or null", '"support"'),
    "data_hash": (_optional(lambda v: isinstance(v, str)), "a string or null", "null"),
    "metrics": (_optional(lambda v: isinstance(v, dict)), "an object of name: number", '{"format_compliance": 0.9}'),
}


def type_problems(data: dict[str, Any], fields: dict[str, _Field], file: str, fix: str) -> list[str]:
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
