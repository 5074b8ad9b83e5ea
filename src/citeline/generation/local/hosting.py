"""The embedded backend's adapters (LoRA and soft prompts): checked, loaded, selected per request, unloaded.

Standard PEFT LoRA folders (adapter_config.json + adapter_model.safetensors). The first load wraps the
model in a ``PeftModel``; every request selects its adapter (``request.model``) or disables all adapter
layers for the base model. Served names are mapped to internal peft names (``lora0``, ``lora1``…) so any
served name works. Before loading, the adapter is checked against the loaded base model by
:func:`citeline.lora.manifest.lora_shape_problems` (every tensor a LoRA matrix of a module the model has and
the config targets, of the shape that module and the rank need: the same check registration runs), so an
adapter built for another model is refused with a clear error; a load that fails anyway is rolled back,
leaving the adapters already loaded untouched.

Soft prompts (peft prompt-tuning folders, :mod:`citeline.lora.soft_prompt`) are checked by the same shape check
registration runs (:func:`citeline.lora.soft_prompt.embedding_problems`, against the loaded model's hidden size)
and kept as a tensor beside peft, not in it: peft's prompt-tuning forward prepends the virtual tokens on every
call, and the decoding loop steps over a KV cache, so :meth:`AdapterHosting.activate` turns every LoRA layer
off and hands the embeddings to the decoding loop, which puts them before the prompt at prefill only.

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
from citeline.lora.soft_prompt import SOFT_PROMPT_TENSOR, embedding_problems, is_soft_prompt

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, PeftModel

__all__ = ["AdapterHosting", "SoftPrompt"]


@dataclass(frozen=True)
class SoftPrompt:
    """A checked soft prompt: its virtual tokens' embeddings, ``[num_virtual_tokens, hidden_size]``."""

    embeddings: torch.Tensor


@dataclass(frozen=True)
class _Adapter:
    path: Path
    key: str  # the adapter's name inside peft (served names may hold characters peft cannot take); "" for a prompt
    prompt: SoftPrompt | None = None  # a soft prompt (not in peft)


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

    def prefix_tokens(self, name: str | None) -> int:
        """How many virtual tokens adapter ``name`` puts before the prompt (0: a LoRA adapter or the base)."""
        entry = self._adapters.get(name) if name is not None else None
        return 0 if entry is None or entry.prompt is None else int(entry.prompt.embeddings.shape[0])

    def check(self, name: str, path: Path, lm: TransformersModel) -> LoraConfig | SoftPrompt:
        """Refuse what is not a LoRA adapter or soft prompt for ``lm``, before touching the model; its peft
        config (LoRA) or its embeddings (a soft prompt)."""
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
            raw = json.loads((path / ADAPTER_CONFIG).read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            if is_soft_prompt(raw):
                return self._check_soft_prompt(name, path, raw, lm)
            config = PeftConfig.from_pretrained(str(path))
        except GenerationError:
            raise
        except Exception as exc:  # bad JSON, unknown fields, unknown peft_type
            raise GenerationError(f"embedded: adapter {name!r}: cannot read {path / ADAPTER_CONFIG}: "
                                  f"{exc}") from exc
        if config.peft_type != PeftType.LORA:
            raise GenerationError(f"embedded: adapter {name!r} is a {config.peft_type} adapter; only LoRA adapters "
                                  "and soft prompts (PROMPT_TUNING) can be served")
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

    def _check_soft_prompt(self, name: str, path: Path, raw: dict[str, Any], lm: TransformersModel) -> SoftPrompt:
        """The soft prompt's embeddings, after the shape check, on the model's device and dtype."""
        from safetensors.torch import load_file

        weights = path / ADAPTER_WEIGHTS
        try:
            with weights.open("rb") as f:
                shapes = safetensors_shapes(f)
            if problems := embedding_problems(raw, shapes, lm.hidden_size):
                raise GenerationError(f"embedded: soft prompt {name!r} does not fit base model {self._base_model}: "
                                      f"{'; '.join(p.message for p in problems[:3])}")
            tensor = load_file(str(weights))[SOFT_PROMPT_TENSOR]
        except (OSError, ValueError, KeyError) as exc:  # not a safetensors file, truncated, swapped meanwhile
            raise GenerationError(f"embedded: soft prompt {name!r}: cannot read {weights}: {exc}") from exc
        if list(tensor.shape) != [raw["num_virtual_tokens"], lm.hidden_size]:  # the file changed since the check
            raise GenerationError(f"embedded: soft prompt {name!r}: {weights} changed while it was being loaded")
        return SoftPrompt(tensor.to(device=lm.embedding_device, dtype=lm.embedding_dtype))

    def add(self, name: str, path: Path, config: LoraConfig | SoftPrompt, lm: TransformersModel) -> None:
        """Load the checked adapter (into peft, for LoRA) under a fresh key; on any failure nothing is left of it."""
        if isinstance(config, SoftPrompt):  # no peft: the decoding loop prepends it (module docstring)
            self._adapters[name] = _Adapter(path=path, key="", prompt=config)
            return
        key = f"lora{self._next_key}"
        self._next_key += 1
        self._inject(name, key, path, config, lm)
        self._adapters[name] = _Adapter(path=path, key=key)

    def remove(self, name: str, lm: TransformersModel) -> None:
        entry = self._adapters.get(name)
        if entry is not None and entry.prompt is not None:
            del self._adapters[name]
            return
        if entry is None or self._peft is None:
            raise GenerationError(f"embedded: no adapter named {name!r} is loaded "
                                  f"(loaded: {', '.join(self._adapters) or 'none'})")
        loras = sum(1 for a in self._adapters.values() if a.prompt is None)
        if loras == 1:  # the last LoRA: back to the plain model, no peft wrapper left
            lm.model = self._peft.unload()  # (kept loaded: the next adapter needs it again)
            self._peft = None
        else:
            self._peft.delete_adapter(entry.key)
        del self._adapters[name]

    def activate(self, adapter: str | None) -> SoftPrompt | None:
        """Put the model into the state a request needs: one LoRA adapter active, or all LoRA layers off (the
        base model, or a soft prompt: returned, for the decoding loop to put before the prompt)."""
        if adapter is not None and adapter not in self._adapters:
            raise GenerationError(f"embedded: adapter {adapter!r} was unloaded before this request ran: "
                                  "load it again or use another model name")
        entry = self._adapters.get(adapter) if adapter is not None else None
        if self._peft is not None:
            layers: Any = self._peft.base_model  # the LoraModel inside the PeftModel
            if entry is None or entry.prompt is not None:
                layers.disable_adapter_layers()
            else:
                layers.enable_adapter_layers()
                self._peft.set_adapter(entry.key, inference_mode=True)
        return entry.prompt if entry is not None else None

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
