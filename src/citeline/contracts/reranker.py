"""The reranker contract: reorder (and prune) the hits retrieval found, after access control.

A reranker is a class registered under the entry-point group ``citeline.rerankers`` (the built-in
``mmr`` is registered in citeline's own ``pyproject.toml`` the same way). It is built by
:func:`citeline.plugins.create` as ``cls(config, embedder=embedder)``: ``config`` is the class's own
pydantic ``Config`` validated from ``[retrieval.reranker_options]``, ``embedder`` the index's
:class:`citeline.contracts.embedder.Embedder` (a reranker may ignore it). ``retrieval.reranker`` names it;
unset (the default), nothing is reranked.

The retriever asks SQL for ``retrieval.candidates`` hits (already filtered by row-level security for the
asking principal) and calls ``rerank(query, hits, k)`` once. A reranker must guarantee:

- it returns ``min(k, len(hits))`` hits, each one of the ``hits`` it was given (the same objects, or copies
  with the same ``chunk_id`` and a new ``score``), none twice: it reorders and prunes to ``k``, it never adds
  a hit, so it cannot show a principal anything access control did not already let through; ``hits`` empty
  gives ``[]``; the sequence it was given is left as it was;
- ``k < 1`` raises ``ValueError``;
- the same query and hits give the same order (deterministic: answers are cached and compared).

``citeline.testing.rerankers.RerankerContract`` checks these; built-ins and plugins run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from citeline.domain import SearchHit

__all__ = ["Reranker"]


@runtime_checkable
class Reranker(Protocol):
    """What retrieval consumes. See the module docstring for the full contract."""

    name: str

    def rerank(self, query: str, hits: Sequence[SearchHit], k: int) -> list[SearchHit]: ...
