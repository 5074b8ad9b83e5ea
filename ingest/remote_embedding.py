"""The ``openai`` embedder: any OpenAI-compatible ``/v1/embeddings`` server (vLLM, TEI, Infinity, OpenAI,
or ``citeline model-server`` serving the local embedder).

Uses the official ``openai`` client, as the ``openai`` generation backend does: its retries with
exponential backoff on connection errors, 429 and 5xx honour ``Retry-After``; ``timeout_s`` per request.
Texts go in batches of ``batch_size``; ``query_prefix`` / ``document_prefix`` are prepended for models
trained with them (E5: ``"query: "`` / ``"passage: "``). Rows are L2-normalised here (``normalize``).

``dimension`` is probed once (one short request) when the config leaves it unset. ``tokenize`` uses a
local tokenizer (``tokenizer``: a folder with ``tokenizer.json``, or the file); without one it is an
approximation: words and punctuation marks (a subword tokenizer gives at least as many tokens), so size
chunks with some margin. The index records :attr:`OpenAIEmbedder.name` (``openai:<model>``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openai
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from citeline.errors import ConfigError, EmbeddingError

__all__ = ["OpenAIEmbedder"]

_WORDS = re.compile(r"\w+|[^\w\s]")


class OpenAIEmbedder:
    """Vectors from an OpenAI-compatible embeddings server."""

    class Config(BaseModel):
        """``[embedding.options]`` of ``provider = "openai"``."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        base_url: str = Field(description="the server's /v1 URL, e.g. http://127.0.0.1:8001/v1")
        model: str = Field(min_length=1, description="the served embedding model's name")
        api_key: SecretStr | None = Field(None, description="the server's API key, if it wants one")
        dimension: int | None = Field(None, ge=1, le=16000, description="the vectors' length (default: asked "
                                      "of the server once)")
        batch_size: int = Field(64, ge=1, le=2048, description="texts per request")
        timeout_s: float = Field(60.0, gt=0, description="per request")
        retries: int = Field(3, ge=0, le=10, description="on connection errors, 429 and 5xx (honours Retry-After)")
        query_prefix: str = Field("", description='prepended to questions, e.g. "query: "')
        document_prefix: str = Field("", description='prepended to chunk texts, e.g. "passage: "')
        normalize: bool = Field(True, description="L2-normalise rows here; false only for servers that already "
                                "return unit vectors")
        tokenizer: Path | None = Field(None, description="a local tokenizer folder (tokenizer.json) for "
                                       "tokenize(); default: words and punctuation (an approximation)")

    def __init__(self, config: Config, *, home: Path | None = None, http_client: Any = None) -> None:
        """``home`` is unused; ``http_client`` (a client of the httpx the ``openai`` package uses) lets tests put
        a transport underneath."""
        self.config = config
        self.name = f"openai:{config.model}"
        key = config.api_key.get_secret_value() if config.api_key else "unused"
        self.client = openai.OpenAI(base_url=config.base_url, api_key=key, timeout=config.timeout_s,
                                    max_retries=config.retries, http_client=http_client)
        self._dimension = config.dimension
        self._tokenizer: Any = None
        if config.tokenizer is not None:
            path = config.tokenizer.expanduser()
            file = path / "tokenizer.json" if path.is_dir() else path
            if not file.is_file():
                raise ConfigError(f"embedding.options.tokenizer: {file} does not exist (a tokenizer.json, or the "
                                  "folder holding one)")
            from tokenizers import Tokenizer  # a local file; no hub access

            self._tokenizer = Tokenizer.from_file(str(file))

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = int(self._request(["dimension probe"]).shape[1])
        return self._dimension

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        prefix, size = self.config.document_prefix, self.config.batch_size
        batches = [self._request([prefix + t for t in texts[i:i + size]]) for i in range(0, len(texts), size)]
        return self._finish(np.vstack(batches))

    def embed_query(self, text: str) -> np.ndarray:
        return self._finish(self._request([self.config.query_prefix + text]))[0]

    def tokenize(self, text: str) -> list[str]:
        if self._tokenizer is not None:
            return list(self._tokenizer.encode(text, add_special_tokens=False).tokens)
        return _WORDS.findall(text)

    def close(self) -> None:
        self.client.close()

    # -- the request --------------------------------------------------------------------------------
    def _request(self, texts: list[str]) -> np.ndarray:
        """One request's rows, in input order, as float32; the server's failures as :class:`EmbeddingError`."""
        try:
            resp = self.client.embeddings.create(model=self.config.model, input=texts, encoding_format="float")
        except openai.OpenAIError as exc:
            raise self._fail(exc) from exc
        where = self.config.base_url
        data = getattr(resp, "data", None)  # a reply that is not JSON comes back as its text
        if not isinstance(data, list) or len(data) != len(texts):
            got = len(data) if isinstance(data, list) else "no"
            raise EmbeddingError(f"the embedding server at {where} returned {got} vectors for {len(texts)} texts; "
                                 "is it an OpenAI-compatible /v1/embeddings? (embedding.options.base_url)")
        try:
            rows = np.asarray([d.embedding for d in sorted(data, key=lambda d: d.index)], dtype=np.float32)
        except (AttributeError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"the embedding server at {where} returned malformed vectors "
                                 f"({type(exc).__name__})") from exc
        expected = self._dimension
        if rows.ndim != 2 or (expected is not None and rows.shape[1] != expected):
            got = rows.shape[1] if rows.ndim == 2 else "ragged"
            raise EmbeddingError(f"the embedding server at {where} returned {got}-dimensional vectors for model "
                                 f"{self.config.model!r}; embedding.options.dimension is {expected}: fix the "
                                 "dimension or the model")
        return rows

    def _finish(self, rows: np.ndarray) -> np.ndarray:
        if not self.config.normalize:
            return rows
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        if np.any(norms == 0) or not np.all(np.isfinite(norms)):
            raise EmbeddingError(f"the embedding server at {self.config.base_url} returned a zero or non-finite "
                                 "vector")
        return (rows / norms).astype(np.float32, copy=False)

    def _fail(self, exc: Exception) -> EmbeddingError:
        where, retries = self.config.base_url, self.config.retries
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return EmbeddingError(f"the embedding server at {where} rejected the API key "
                                  f"(HTTP {exc.status_code}); check embedding.options.api_key")
        if isinstance(exc, openai.NotFoundError):
            return EmbeddingError(f"the embedding server at {where} does not serve model {self.config.model!r} "
                                  "(or has no /embeddings); fix embedding.options.model or base_url")
        if isinstance(exc, openai.APITimeoutError):
            return EmbeddingError(f"the embedding server at {where} timed out after {self.config.timeout_s}s "
                                  f"({retries} retries); raise embedding.options.timeout_s or check the server")
        if isinstance(exc, openai.APIConnectionError):
            return EmbeddingError(f"cannot reach the embedding server at {where} ({retries} retries); is it "
                                  "running? (embedding.options.base_url)")
        if isinstance(exc, openai.APIStatusError):
            return EmbeddingError(f"the embedding server at {where} failed with HTTP {exc.status_code} after "
                                  f"{retries} retries: {_message(exc)}")
        return EmbeddingError(f"the embedding server at {where} sent a reply that is not an embeddings "
                              f"response ({type(exc).__name__})")


def _message(exc: openai.APIStatusError) -> str:
    """The server's own error message, short (a body never holds our key: it is sent only in a header)."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        return str(text)[:300]
    return str(exc.message)[:300]
