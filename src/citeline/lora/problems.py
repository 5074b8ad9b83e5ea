"""What an adapter check finds: :class:`AdapterProblem` (a :class:`Problem` kind and a message), and the names of
an adapter folder's two peft files. Shared by :mod:`citeline.lora.manifest` (which re-exports them) and
:mod:`citeline.lora.soft_prompt`, so neither imports the other's checks in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterProblem", "Problem"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


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
