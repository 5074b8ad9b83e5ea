"""Hybrid search with convex fusion (retrieval.fusion = "convex", the default) against the real index.

Every candidate of either list is scored by both methods in SQL, as the asking principal; the fused score
is recomputed here from the scores the hits carry, so a wrong scaling, weight or document bonus fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from citeline.access.principals import PrincipalStore
from citeline.domain import Access, Principal, SearchMode
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever
from citeline.settings import Fusion, RetrievalSettings
from tests.support.connectors import ListConnector, doc

pytestmark = pytest.mark.integration

QUESTION = "how does the zebra crossing protocol work"
PUBLIC = [
    doc("zebra", "A zebra crossing gives pedestrians the right of way.", title="crossings"),
    doc("protocol", "The protocol for a crossing: stop, look, then walk.", title="road rules"),
    doc("animals", "Zebras graze on the savanna in herds.", title="wildlife"),
    doc("kettle", "The blue kettle costs 30 EUR.", title="shop"),
    doc("long", "Zebra crossing rules, part one: drivers stop for anyone waiting at the kerb. "
        + "filler words about nothing in particular. " * 60
        + "Zebra crossing rules, part two: cyclists dismount before crossing.", title="long rules"),
]
SECRET = doc("secret", "The zebra crossing protocol override code is 4711.", title="vault",
             access=Access(groups=("vault",)))


def _index(db, embedder, chunker, docs) -> None:
    SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector(docs))
    PrincipalStore(db).put(Principal("vera", ("vault",)))


def _expected(hits, alpha: float, second: float) -> dict[int, float]:
    """The fused score of each hit, recomputed from its cosine and BM25 score (all candidates returned)."""
    cos = np.array([1 - h.dense_distance for h in hits])
    lex = np.array([h.lexical_score for h in hits])
    own = alpha * (cos + 1) / (cos.max() + 1) + (1 - alpha) * lex / lex.max()  # from -1 and 0 to the best
    out = {}
    for i, h in enumerate(hits):
        others = [own[j] for j, g in enumerate(hits) if g.document_id == h.document_id and j != i]
        out[h.chunk_id] = own[i] + second * max(others, default=0.0)
    return out


@pytest.mark.parametrize(("alpha", "second"), [(0.5, 0.0), (0.3, 0.2), (0.8, 0.1)])
def test_every_candidate_carries_both_scores_and_the_fused_score_is_their_weighted_sum(db, embedder, chunker,
                                                                                     alpha, second):
    _index(db, embedder, chunker, PUBLIC)
    retriever = Retriever(db, embedder, RetrievalSettings(fusion_weight=alpha, fusion_second_chunk=second))
    hits = retriever.search(QUESTION, user=None, k=50, mode=SearchMode.HYBRID, candidates=50).hits
    assert len({h.document_id for h in hits}) == len(PUBLIC) and len(hits) > len(PUBLIC)  # "long" has 2+ chunks
    assert all(h.dense_distance is not None and h.lexical_score is not None for h in hits)
    # the dense-only candidate (the kettle shares no term) gets BM25 0; a lexical hit gets its cosine
    assert next(h for h in hits if h.external_id == "kettle").lexical_score == 0.0
    # the cosine of every candidate is its stored embedding's, as dense search gives it
    dense = {h.chunk_id: h.dense_distance for h in
             retriever.search(QUESTION, user=None, k=50, mode=SearchMode.DENSE, candidates=50).hits}
    assert {h.chunk_id: h.dense_distance for h in hits} == pytest.approx(dense, abs=1e-6)
    # BM25 of a candidate equals what lexical search gives it (same terms, same statistics)
    lexical = {h.chunk_id: h.lexical_score for h in
               retriever.search(QUESTION, user=None, k=50, mode=SearchMode.LEXICAL, candidates=50).hits}
    for h in hits:
        assert h.lexical_score == pytest.approx(lexical.get(h.chunk_id, 0.0), rel=1e-9)
    expected = _expected(hits, alpha, second)
    assert [h.score for h in hits] == pytest.approx([expected[h.chunk_id] for h in hits], abs=1e-9)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_the_weight_moves_the_order_between_the_two_methods(db, embedder, chunker):
    _index(db, embedder, chunker, PUBLIC)

    def order(alpha: float) -> list[int]:
        r = Retriever(db, embedder, RetrievalSettings(fusion_weight=alpha))
        return [h.chunk_id for h in r.search(QUESTION, user=None, k=50, mode=SearchMode.HYBRID, candidates=50).hits]

    dense = Retriever(db, embedder).search(QUESTION, user=None, k=50, mode=SearchMode.DENSE, candidates=50).hits
    lexical = Retriever(db, embedder).search(QUESTION, user=None, k=50, mode=SearchMode.LEXICAL, candidates=50).hits
    assert order(1.0) == [h.chunk_id for h in dense]
    assert order(0.0)[: len(lexical)] == [h.chunk_id for h in lexical]


def test_rrf_remains_an_option(db, embedder, chunker):
    _index(db, embedder, chunker, PUBLIC)
    hits = Retriever(db, embedder, RetrievalSettings(fusion=Fusion.RRF, rrf_k=60)).search(
        QUESTION, user=None, k=50, mode=SearchMode.HYBRID, candidates=50).hits
    for h in hits:
        ranks = [r for r in (h.dense_rank, h.lexical_rank) if r is not None]
        assert h.score == pytest.approx(sum(1 / (60 + r) for r in ranks))


def test_fusion_never_widens_what_a_principal_sees_nor_depends_on_what_it_cannot(db, embedder, chunker):
    """A hidden chunk that matches the question best is neither shown to the public nor moves their scores:
    candidates, scaling and statistics are those of the principal's own visible rows."""
    _index(db, embedder, chunker, PUBLIC)
    retriever = Retriever(db, embedder)

    def public_view() -> list[tuple[str, float]]:
        hits = retriever.search(QUESTION, user=None, k=50, mode=SearchMode.HYBRID, candidates=50).hits
        return [(h.external_id, round(h.score, 9)) for h in hits]

    before = public_view()
    _index(db, embedder, chunker, [*PUBLIC, SECRET])
    after = public_view()
    assert "secret" not in {e for e, _ in after}
    assert after == before
    vera = [h.external_id for h in retriever.search(QUESTION, user="vera", k=3, mode=SearchMode.HYBRID).hits]
    assert vera[0] == "secret"  # the principal who may see it gets it, first


@pytest.mark.parametrize("query", ["the of and", "'; DROP TABLE chunks; --", "qqqzzzxxy", "\\' \" & | ! :*"])
def test_hostile_or_empty_questions_give_dense_order_without_error(db, embedder, chunker, query):
    _index(db, embedder, chunker, PUBLIC)
    retriever = Retriever(db, embedder, RetrievalSettings(fusion_second_chunk=0.0))
    hybrid = retriever.search(query, user=None, k=10, mode=SearchMode.HYBRID).hits
    dense = retriever.search(query, user=None, k=10, mode=SearchMode.DENSE).hits
    assert all(h.lexical_score == 0.0 for h in hybrid)  # no term matches: the lexical side adds nothing
    assert [h.chunk_id for h in hybrid] == [h.chunk_id for h in dense]


def test_a_principal_who_sees_nothing_gets_nothing_and_global_statistics_still_fuse(db, embedder, chunker):
    _index(db, embedder, chunker, [SECRET])
    assert Retriever(db, embedder).search(QUESTION, user=None, k=5, mode=SearchMode.HYBRID).hits == ()
    assert Retriever(db, embedder).search(QUESTION, user="nobody", k=5, mode=SearchMode.HYBRID).hits == ()
    hits = Retriever(db, embedder, RetrievalSettings(lexical_statistics="global")).search(
        QUESTION, user="vera", k=5, mode=SearchMode.HYBRID).hits
    assert [h.external_id for h in hits] == ["secret"] and hits[0].lexical_score > 0
