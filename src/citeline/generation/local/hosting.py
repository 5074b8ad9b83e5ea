"""The embedded backend's LoRA adapters: checked, loaded into peft, selected per request, unloaded.

Standard PEFT LoRA folders (adapter_config.json + adapter_model.safetensors). The first load wraps the
model in a ``PeftModel``; every request selects its adapter (``request.model``) or disables all adapter
layers for the base model. Served names are mapped to internal peft names (``lora0``, ``lora1``…) so any
served name works. Before loading, the adapter is checked against the loaded base model by
:func:`citeline.lora.manifest.lora_shape_problems` (every tensor a LoRA matrix of a module the model has and
the config targets, of the shape that module and the rank need: the same check registration runs), so an
adapter built for another model is refused with a clear error; a load that fails anyway is rolled back,
leaving the adapters already loaded untouched.

:class:`AdapterHosting` holds no lock: the backend calls :meth:`~AdapterHosting.add`,
:meth:`~AdapterHosting.remove` and :meth:`~AdapterHosting.activate` under its model lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline.errors import GenerationError
from citeline.generation.local.decoding import TransformersModel
from citeline.lora.manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_shape_problems
from citeline.lora.safetensors_header import safetensors_shapes

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

__all__ = ["AdapterHosting"]


@dataclass(frozen=True)
class _Adapter:
    path: Path
    key: str  # the adapter's name inside peft (served names may hold characters peft cannot take)


class AdapterHosting:
    """The adapters loaded into one :class:`TransformersModel`, by served name."""

    def __init__(self, base_model: str) -> None:
        self._base_model = base_model  # for messages
        self._peft: PeftModel | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._next_key = 0

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def names(self) -> list[str]:
        return list(self._adapters)

    def paths(self) -> dict[str, Path]:
        return {name: entry.path for name, entry in list(self._adapters.items())}

    def loaded(self, name: str, path: Path) -> bool:
        """True when ``name`` is loaded from ``path``; an error when it is loaded from another folder."""
        existing = self._adapters.get(name)
        if existing is None:
            return False
        if existing.path != path:
            raise GenerationError(f"embedded: adapter {name!r} is already loaded from {existing.path}: unload it "
                                  "first or load the new version under another name")
        return True

    def check(self, name: str, path: Path, lm: TransformersModel) -> LoraConfig:
        """Refuse what is not a LoRA adapter for ``lm``, before touching the model; its peft config."""
        from peft import PeftConfig, PeftType

        if not path.is_dir():
            problem = "is not a folder" if path.exists() else "does not exist"
            raise GenerationError(f"embedded: adapter {name!r}: {path} {problem}; pass the folder that holds "
                                  "adapter_config.json and adapter_model.safetensors")
        weights = path / ADAPTER_WEIGHTS
        if not (path / ADAPTER_CONFIG).is_file() or not weights.is_file():
            raise GenerationError(f"embedded: adapter {name!r}: {path} is not a PEFT adapter folder (it needs "
                                  "adapter_config.json and adapter_model.safetensors; save it with "
                                  "model.save_pretrained(folder) from peft)")
        try:
            config = PeftConfig.from_pretrained(str(path))
            raw = json.loads((path / ADAPTER_CONFIG).read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
        except Exception as exc:  # bad JSON, unknown fields, unknown peft_type
            raise GenerationError(f"embedded: adapter {name!r}: cannot read {path / ADAPTER_CONFIG}: "
                                  f"{exc}") from exc
        if config.peft_type != PeftType.LORA:
            raise GenerationError(f"embedded: adapter {name!r} is a {config.peft_type} adapter; only LoRA adapters "
                                  "can be served")
        config.inference_mode = True
        try:
            with weights.open("rb") as f:
                shapes = safetensors_shapes(f)
        except (OSError, ValueError) as exc:  # not a safetensors file, truncated
            raise GenerationError(f"embedded: adapter {name!r}: cannot read {weights}: {exc}") from exc
        if problems := lora_shape_problems(shapes, raw, lm.linear_shapes):
            raise GenerationError(f"embedded: adapter {name!r} does not fit base model {self._base_model}: "
                                  f"{'; '.join(p.message for p in problems[:3])}; it was trained for another base "
                                  "model, or its adapter_config.json does not match its weights")
        return config

    def add(self, name: str, path: Path, config: LoraConfig, lm: TransformersModel) -> None:
        """Load the checked adapter into peft under a fresh key; on any failure nothing is left of it."""
        key = f"lora{self._next_key}"
        self._next_key += 1
        self._inject(name, key, path, config, lm)
        self._adapters[name] = _Adapter(path=path, key=key)

    def remove(self, name: str, lm: TransformersModel) -> None:
        entry = self._adapters.get(name)
        if entry is None or self._peft is None:
            raise GenerationError(f"embedded: no adapter named {name!r} is loaded "
                                  f"(loaded: {', '.join(self._adapters) or 'none'})")
        if len(self._adapters) == 1:  # the last one: back to the plain model, no peft wrapper left
            lm.model = self._peft.unload()  # (kept loaded: the next adapter needs it again)
            self._peft = None
        else:
            self._peft.delete_adapter(entry.key)
        del self._adapters[name]

    def activate(self, adapter: str | None) -> None:
        """Put the model into the state a request needs: one adapter active, or all adapter layers off."""
        if adapter is not None and adapter not in self._adapters:
            raise GenerationError(f"embedded: adapter {adapter!r} was unloaded before this request ran: "
                                  "load it again or use another model name")
        if self._peft is None:
            return
        layers: Any = self._peft.base_model  # the LoraModel inside the PeftModel
        if adapter is None:
            layers.disable_adapter_layers()
        else:
            layers.enable_adapter_layers()
            self._peft.set_adapter(self._adapters[adapter].key, inference_mode=True)

    def clear(self) -> None:
        self._peft = None
        self._adapters.clear()

    def _inject(self, name: str, key: str, path: Path, config: LoraConfig, lm: TransformersModel) -> None:
        """Load the adapter into peft; on any failure undo what was added and raise GenerationError."""
        from peft import PeftModel

        model = lm.model
        if model is None:
            raise GenerationError("embedded: the backend was closed: create a new one")
        fresh = self._peft is None
        try:
            peft = self._peft if self._peft is not None else PeftModel(model, config, adapter_name=key)
        except Exception as exc:  # e.g. target_modules the model lacks; peft checks before it changes anything
            raise GenerationError(f"embedded: adapter {name!r} does not fit base model {self._base_model}: "
                                  f"{exc}") from exc
        try:
            result = peft.load_adapter(str(path), adapter_name=key, is_trainable=False)
            missing = [k for k in getattr(result, "missing_keys", []) if f".{key}." in k and "lora_" in k]
            if missing:
                raise GenerationError(f"embedded: adapter {name!r} lacks weights for {len(missing)} of its modules "
                                      f"(e.g. {missing[0]}): save it again with peft")
        except Exception as exc:
            if fresh:
                lm.model = peft.unload()
            elif key in peft.peft_config:
                peft.delete_adapter(key)
            if isinstance(exc, GenerationError):
                raise
            raise GenerationError(f"embedded: adapter {name!r} from {path} could not be loaded: {exc}") from exc
        self._peft = peft
        model.eval()
