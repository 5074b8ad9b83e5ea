"""The ``openai`` backend: any OpenAI-compatible chat-completions server (vLLM in production).

Uses the official ``openai`` client (its own retries with exponential backoff on connection errors,
429 and 5xx; ``timeout_s`` per request). ``request.model`` names the served model: the base model or a
LoRA adapter that vLLM serves under its own name. The prompt budget is counted with a local tokenizer
directory when ``generation.tokenizer`` is set, otherwise with the server's ``/tokenize`` endpoint (vLLM
has one), cached per text. ``request.stop`` goes to the server (at most four, as OpenAI allows); the
server's ``finish_reason`` is reported (``stream`` returns it when it ends).
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import openai

from citeline.errors import ConfigError, GenerationError, ModelNotFoundError
from citeline.contracts.generator import Generation, GenerationRequest
from citeline.settings import GenerationSettings

__all__ = ["OpenAIBackend"]


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: GenerationSettings, home: Path | None = None) -> None:
        if not settings.base_url:
            raise ConfigError("generation.base_url is required for the openai backend "
                              "(e.g. http://127.0.0.1:8000/v1 for a local vLLM)")
        if not settings.model:
            raise ConfigError("generation.model must name the served base model for the openai backend")
        self.settings = settings
        key = settings.api_key.get_secret_value() if settings.api_key else "unused"
        self.client = openai.OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s,
                                    max_retries=settings.retries)
        self._tokenizer: Any = None
        if settings.tokenizer:
            from tokenizers import Tokenizer  # a local tokenizer.json; no hub access
            path = Path(settings.tokenizer)
            self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))

    @property
    def base_model(self) -> str:
        return str(self.settings.model)

    def _fail(self, exc: Exception, model: str) -> GenerationError:
        where = self.settings.base_url
        if isinstance(exc, openai.NotFoundError):
            return ModelNotFoundError(f"model {model!r} is not served at {where}; load the adapter or fix "
                                   "generation.model")
        if isinstance(exc, openai.APITimeoutError):
            return GenerationError(f"the model server at {where} timed out after {self.settings.timeout_s}s "
                                   f"({self.settings.retries} retries); raise generation.timeout_s or check the server")
        if isinstance(exc, openai.APIConnectionError):
            return GenerationError(f"cannot reach the model server at {where}; is it running? "
                                   "(generation.base_url)")
        if isinstance(exc, openai.AuthenticationError):
            return GenerationError(f"the model server at {where} rejected the API key (generation.api_key)")
        return GenerationError(f"the model server at {where} failed: {exc}")

    def _args(self, request: GenerationRequest) -> dict[str, Any]:
        return {"model": request.model or self.base_model,
                "messages": [{"role": m.role, "content": m.content} for m in request.messages],
                "max_tokens": request.max_tokens, "temperature": request.temperature,
                **({"stop": list(request.stop)[:4]} if request.stop else {})}

    def generate(self, request: GenerationRequest) -> Generation:
        args = self._args(request)
        try:
            resp = self.client.chat.completions.create(**args)
        except openai.OpenAIError as exc:
            raise self._fail(exc, args["model"]) from exc
        choice = resp.choices[0]
        usage = resp.usage
        return Generation(choice.message.content or "", resp.model, usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, _finish(choice.finish_reason))

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:
        """Text deltas; returns the server's finish reason ("stop" or "length")."""
        args = self._args(request)
        finish: str | None = None
        try:
            for chunk in self.client.chat.completions.create(**args, stream=True):
                if not chunk.choices:
                    continue
                if chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
                finish = chunk.choices[0].finish_reason or finish
        except openai.OpenAIError as exc:
            raise self._fail(exc, args["model"]) from exc
        return _finish(finish)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one backend per process; texts repeat (evidence)
    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        root = str(self.settings.base_url).rstrip("/").removesuffix("/v1")
        try:
            resp = httpx.post(f"{root}/tokenize", json={"model": self.base_model, "prompt": text,
                                                         "add_special_tokens": False}, timeout=self.settings.timeout_s)
            resp.raise_for_status()
            return int(resp.json()["count"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise GenerationError(f"cannot count tokens with {root}/tokenize ({exc}); set generation.tokenizer "
                                  "to a local tokenizer directory") from exc

    def models(self) -> list[str]:
        try:
            served = [m.id for m in self.client.models.list()]
        except openai.OpenAIError as exc:
            raise self._fail(exc, self.base_model) from exc
        return [self.base_model, *[m for m in served if m != self.base_model]]

    def close(self) -> None:
        self.client.close()
