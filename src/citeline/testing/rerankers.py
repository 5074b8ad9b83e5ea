"""A contract test suite every reranker runs (built-in or third-party).

Inherit :class:`RerankerContract` in a pytest test class and provide a ``reranker`` fixture (built as
``cls(config, embedder=...)``)::

    from citeline.testing.rerankers import RerankerContract

    class TestMyReranker(RerankerContract):
        @pytest.fixture
        def reranker(self):
            return MyReranker(MyReranker.Config(), embedder=None)

It checks the promises of :mod:`citeline.contracts.reranker`: a reranker reorders and prunes the hits it
is given and never adds one. Nothing here imports pytest.
"""

from __future__ import annotations

from typing import Any

from citeline.contracts.reranker import Reranker
from citeline.domain import SearchHit

__all__ = ["QUERY", "RerankerContract", "sample_hits"]

QUERY = "how do I roll back a bad deploy"
_TEXTS = (
    "Run acme-deploy rollback fleet to redeploy the previous release.",
    "Run acme-deploy rollback fleet to redeploy the previous release in under two minutes.",
    "Deploys happen Monday to Thursday; never on Fridays.",
    "Opened items can be returned within 30 days for a refund.",
    "The blue kettle costs 30 EUR.",
    "Rollbacks keep the database as it is; migrations are rolled back by hand.",
)


def sample_hits() -> tuple[SearchHit, ...]:
    """Hits as retrieval returns them: best first, decreasing scores."""
    return tuple(
        SearchHit(chunk_id=100 + n, document_id=10 + n // 2, source="docs", external_id=f"doc-{n // 2}",
                  title=f"Doc {n // 2}", url=None, text=text, span_start=0, span_end=len(text),
                  score=1.0 / (60 + n + 1), dense_rank=n + 1, lexical_rank=None)
        for n, text in enumerate(_TEXTS))


def _ids(hits: Any) -> list[int]:
    return [h.chunk_id for h in hits]


class RerankerContract:
    """Checks the promises of :mod:`citeline.contracts.reranker`. Needs a ``reranker`` fixture."""

    def test_is_a_reranker(self, reranker: Any) -> None:
        assert isinstance(reranker, Reranker), "the class implements citeline.contracts.reranker.Reranker"
        assert isinstance(reranker.name, str) and reranker.name, "name is a non-empty string"

    def test_returns_k_of_the_given_hits(self, reranker: Any) -> None:
        hits = sample_hits()
        for k in (1, 3, len(hits)):
            out = reranker.rerank(QUERY, hits, k)
            assert isinstance(out, list) and all(isinstance(h, SearchHit) for h in out), "a list of SearchHit"
            assert len(out) == k, f"k={k} of {len(hits)} hits gives {k}, not {len(out)}"
            assert len(set(_ids(out))) == len(out), "no hit twice"
            given = {h.chunk_id: h for h in hits}
            assert set(_ids(out)) <= set(given), "only hits it was given (it never adds one)"
            for h in out:
                assert (h.document_id, h.text, h.source) == (given[h.chunk_id].document_id, given[h.chunk_id].text,
                                                             given[h.chunk_id].source), "hits are not altered"

    def test_fewer_hits_than_k_all_come_back(self, reranker: Any) -> None:
        hits = sample_hits()[:3]
        assert sorted(_ids(reranker.rerank(QUERY, hits, 10))) == sorted(_ids(hits)), "k > len(hits): all of them"
        assert _ids(reranker.rerank(QUERY, hits[:1], 5)) == _ids(hits[:1]), "one hit: that hit"

    def test_no_hits(self, reranker: Any) -> None:
        assert reranker.rerank(QUERY, (), 5) == [], "no hits, []"

    def test_bad_k(self, reranker: Any) -> None:
        for k in (0, -1):
            try:
                reranker.rerank(QUERY, sample_hits(), k)
            except ValueError:
                continue
            raise AssertionError(f"rerank(k={k}) raises ValueError")

    def test_deterministic_and_leaves_its_input(self, reranker: Any) -> None:
        hits = sample_hits()
        given = list(hits)
        first = _ids(reranker.rerank(QUERY, given, 4))
        assert given == list(hits), "the list it was given is not modified"
        assert first == _ids(reranker.rerank(QUERY, list(hits), 4)), "the same query and hits, the same order"
