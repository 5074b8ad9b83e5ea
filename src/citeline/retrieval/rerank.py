"""The built-in reranker ``mmr``: maximal marginal relevance over the hits retrieval found.

Retrieval ranks each chunk on its own, so a question whose best evidence sits in one long document can
fill the top ``k`` with near-copies (overlapping chunks, a page mirrored in two sources). MMR picks the
hits one at a time, each time the one with the best ``(1 - diversity) * relevance - diversity *
(its greatest similarity to a hit already picked)``; ties keep retrieval's order.

``similarity = "tokens"`` (the default: no model call) takes relevance from the retrieval scores (scaled to
0..1 over the hits) and similarity as the Jaccard overlap of the hits' word sets. ``"embeddings"`` embeds
the hits' texts with the index's embedder and uses cosine similarity for both (one ``embed_documents``
call per question: a few ms per hit on CPU).

It only reorders and prunes the hits it is given (:mod:`citeline.contracts.reranker`); the hits are
returned unchanged, scores included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from citeline.contracts.embedder import Embedder
from citeline.domain import SearchHit
from citeline.errors import ConfigError

__all__ = ["MMRReranker"]

_WORD = re.compile(r"\w+")


class MMRReranker:
    """Maximal marginal relevance; see the module docstring."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        diversity: float = Field(0.3, ge=0.0, le=1.0, description="0: retrieval's order; 1: as unlike the hits "
                                 "already picked as possible")
        similarity: Literal["tokens", "embeddings"] = Field("tokens", description="tokens: word overlap (no model "
                                                            "call); embeddings: the index's embedder")

    def __init__(self, config: Config | None = None, *, embedder: Embedder | None = None) -> None:
        self.config = config or self.Config()
        if self.config.similarity == "embeddings" and embedder is None:
            raise ConfigError("[retrieval.reranker_options] similarity = \"embeddings\" needs the index's embedder")
        self.embedder = embedder
        self.name = f"mmr:{self.config.similarity}:{self.config.diversity:g}"

    def rerank(self, query: str, hits: Sequence[SearchHit], k: int) -> list[SearchHit]:
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if len(hits) <= 1:
            return list(hits)
        relevance, similarity = (self._embedded(query, hits) if self.config.similarity == "embeddings"
                                 else self._lexical(hits))
        order = _mmr(relevance, similarity, self.config.diversity, min(k, len(hits)))
        return [hits[i] for i in order]

    @staticmethod
    def _lexical(hits: Sequence[SearchHit]) -> tuple[np.ndarray, np.ndarray]:
        scores = np.array([h.score for h in hits], dtype=np.float64)
        spread = scores.max() - scores.min()
        relevance = (scores - scores.min()) / spread if spread > 0 else np.ones(len(hits))
        words = [set(_WORD.findall(h.text.lower())) for h in hits]
        similarity = np.zeros((len(hits), len(hits)))
        for i, a in enumerate(words):
            for j in range(i + 1, len(words)):
                union = len(a | words[j])
                similarity[i, j] = similarity[j, i] = len(a & words[j]) / union if union else 0.0
        return relevance, similarity

    def _embedded(self, query: str, hits: Sequence[SearchHit]) -> tuple[np.ndarray, np.ndarray]:
        assert self.embedder is not None
        vectors = np.asarray(self.embedder.embed_documents([h.text for h in hits]), dtype=np.float64)
        question = np.asarray(self.embedder.embed_query(query), dtype=np.float64)
        return vectors @ question, vectors @ vectors.T


def _mmr(relevance: np.ndarray, similarity: np.ndarray, diversity: float, k: int) -> list[int]:
    """Greedy MMR: indices of the ``k`` picks in pick order (ties: the lower index, i.e. retrieval's order)."""
    picked: list[int] = []
    left = list(range(len(relevance)))
    closest = np.full(len(relevance), -np.inf)  # greatest similarity to a pick so far (none yet)
    while left and len(picked) < k:
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        gain = (1.0 - diversity) * relevance - diversity * penalty
        best = max(left, key=lambda i: (gain[i], -i))
        picked.append(best)
        left.remove(best)
        closest = np.maximum(closest, similarity[best])
    return picked
