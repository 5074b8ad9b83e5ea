"""The reranker ``cross-encoder``: a sentence-transformers ``CrossEncoder`` from a local folder scores each hit.

For those who have cross-encoder weights (no cross-encoder ships in a wheel, so none is the default): set
``retrieval.reranker = "cross-encoder"`` and ``[retrieval.reranker_options] model = "/path/to/folder"``. The
model reads ``(question, chunk text)`` pairs and the hits are ordered by its score (ties keep retrieval's order);
each hit comes back as a copy whose ``score`` is the model's. Nothing is downloaded: the folder must hold the
model (``local_files_only``). Needs the ``[local]`` extra (sentence-transformers, torch).

It only reorders and prunes the hits it is given (:mod:`citeline.contracts.reranker`), which row-level
security already filtered for the asking principal; it reads their text, never the index.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from citeline.contracts.embedder import Embedder
from citeline.domain import SearchHit
from citeline.errors import ConfigError

__all__ = ["CrossEncoderReranker"]


class CrossEncoderReranker:
    """Scores (question, hit text) pairs with a local cross-encoder; see the module docstring."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        model: Path = Field(description="local folder of a sentence-transformers CrossEncoder (never downloaded)")
        batch_size: int = Field(32, ge=1, le=1024, description="pairs per forward pass")
        max_length: int = Field(512, ge=8, le=8192, description="tokens per pair; longer pairs are truncated")
        device: str = Field("cpu", description="torch device, e.g. cpu or cuda")

    def __init__(self, config: Config, *, embedder: Embedder | None = None) -> None:
        path = config.model.expanduser()
        if not path.is_dir():
            raise ConfigError(f"[retrieval.reranker_options] model: {path} is not a folder; set it to a local "
                              "sentence-transformers CrossEncoder folder (models are never downloaded)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder  # heavy: only when this reranker is configured

        try:
            self._model: Any = CrossEncoder(str(path), max_length=config.max_length, device=config.device,
                                            local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[retrieval.reranker_options] model: {path} does not hold a cross-encoder "
                              f"that loads offline ({exc.__class__.__name__}: {exc})") from exc
        self.config = config
        self.name = f"cross-encoder:{path.name}"

    def rerank(self, query: str, hits: Sequence[SearchHit], k: int) -> list[SearchHit]:
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if not hits:
            return []
        scores = self._model.predict([(query, h.text) for h in hits], batch_size=self.config.batch_size,
                                     show_progress_bar=False, convert_to_numpy=True)
        order = sorted(range(len(hits)), key=lambda i: (-float(scores[i]), i))[:k]
        return [dataclasses.replace(hits[i], score=float(scores[i])) for i in order]
