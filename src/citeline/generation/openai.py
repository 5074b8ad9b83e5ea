"""The ``openai`` backend: any OpenAI-compatible chat-completions server (vLLM in production).

Uses the official ``openai`` client (its own retries with exponential backoff on connection errors,
429 and 5xx; ``timeout_s`` per request). ``request.model`` names the served model: the base model or a
LoRA adapter that vLLM serves under its own name. Its own options are ``[generation.options]``
(:class:`OpenAIBackend.Config`). The prompt budget is counted with a local tokenizer directory when
``tokenizer`` is set, otherwise with the server's ``/tokenize`` endpoint (vLLM
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
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from citeline.contracts.generator import Generation, GenerationRequest
from citeline.errors import ConfigError, GenerationError, ModelNotFoundError
from citeline.settings import GenerationSettings

__all__ = ["OpenAIBackend"]


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class OpenAIBackend:
    name = "openai"

    class Config(BaseModel):
        """``[generation.options]`` of ``backend = "openai"``."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        base_url: str | None = Field(None, description="the server's /v1 URL, e.g. http://127.0.0.1:8000/v1")
        model: str | None = Field(None, description="the served base model's name")
        api_key: SecretStr | None = Field(None, description="the server's API key, if it wants one")
        tokenizer: str | None = Field(None, description="a local tokenizer directory for the prompt budget "
                                      "(default: ask the server's /tokenize)")
        retries: int = Field(2, ge=0, le=10)

    def __init__(self, config: Config, *, home: Path | None = None,
                 generation: GenerationSettings | None = None) -> None:
        """``generation`` (the core section) gives ``timeout_s``; ``home`` is unused."""
        if not config.base_url:
            raise ConfigError("generation.options.base_url is required for the openai backend "
                              "(e.g. http://127.0.0.1:8000/v1 for a local vLLM)")
        if not config.model:
            raise ConfigError("generation.options.model must name the served base model for the openai backend")
        self.config = config
        self.timeout_s = (generation or GenerationSettings()).timeout_s
        key = config.api_key.get_secret_value() if config.api_key else "unused"
        self.client = openai.OpenAI(base_url=config.base_url, api_key=key, timeout=self.timeout_s,
                                    max_retries=config.retries)
        self._tokenizer: Any = None
        if config.tokenizer:
            from tokenizers import Tokenizer  # a local tokenizer.json; no hub access
            path = Path(config.tokenizer)
            self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))

    @property
    def base_model(self) -> str:
        return str(self.config.model)

    def _fail(self, exc: Exception, model: str) -> GenerationError:
        where = self.config.base_url
        if isinstance(exc, openai.NotFoundError):
            return ModelNotFoundError(f"model {model!r} is not served at {where}; load the adapter or fix "
                                      "generation.options.model")
        if isinstance(exc, openai.APITimeoutError):
            return GenerationError(f"the model server at {where} timed out after {self.timeout_s}s "
                                   f"({self.config.retries} retries); raise generation.timeout_s or check the server")
        if isinstance(exc, openai.APIConnectionError):
            return GenerationError(f"cannot reach the model server at {where}; is it running? "
                                   "(generation.options.base_url)")
        if isinstance(exc, openai.AuthenticationError):
            return GenerationError(f"the model server at {where} rejected the API key (generation.options.api_key)")
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
        root = str(self.config.base_url).rstrip("/").removesuffix("/v1")
        try:
            resp = httpx.post(f"{root}/tokenize", json={"model": self.base_model, "prompt": text,
                                                         "add_special_tokens": False}, timeout=self.timeout_s)
            resp.raise_for_status()
            return int(resp.json()["count"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise GenerationError(f"cannot count tokens with {root}/tokenize ({exc}); set generation.options.tokenizer "
                                  "to a local tokenizer directory") from exc

    def models(self) -> list[str]:
        try:
            served = [m.id for m in self.client.models.list()]
        except openai.OpenAIError as exc:
            raise self._fail(exc, self.base_model) from exc
        return [self.base_model, *[m for m in served if m != self.base_model]]

    def close(self) -> None:
        self.client.close()
