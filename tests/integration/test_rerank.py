"""Reranking (retrieval.reranker) against the real index: off by default (today's hits, exactly), and when on it
only reorders and prunes what row-level security already let the principal see."""

from __future__ import annotations

import pytest

from citeline.access.principals import PrincipalStore
from citeline.contracts.reranker import Reranker
from citeline.domain import Access, Principal, SearchHit, SearchMode
from citeline.errors import ConfigError
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever
from citeline.settings import RetrievalSettings
from tests.support.connectors import ListConnector, doc

pytestmark = pytest.mark.integration

ROLLBACK = "Run acme-deploy rollback fleet to redeploy the previous release."
CORPUS = [
    doc("runbook", ROLLBACK, access=Access.everyone()),
    doc("runbook-copy", ROLLBACK + " Copied from the runbook.", access=Access.everyone()),
    doc("calendar", "Deploys happen Monday to Thursday; a rollback is allowed any day.", access=Access.everyone()),
    doc("secret", "The secret rollback password for the deploy fleet is hunter2.", access=Access(groups=("ops",))),
    doc("returns", "Opened items can be returned within 30 days for a refund.", access=Access.everyone()),
]


class Recording:
    """A reranker that records what it was given and reverses it."""

    name = "recording"

    def __init__(self) -> None:
        self.given: list[tuple[SearchHit, ...]] = []

    def rerank(self, query: str, hits, k: int) -> list[SearchHit]:
        self.given.append(tuple(hits))
        return list(reversed(hits))[:k]


@pytest.fixture
def indexed(db, embedder, chunker):
    SyncRunner(db, embedder, chunker).run("wiki", "list", ListConnector(CORPUS))
    PrincipalStore(db).put(Principal("olga", ("ops",)))
    return db


def test_no_reranker_by_default(indexed, embedder):
    retriever = Retriever(indexed, embedder)
    assert retriever.settings.reranker is None and retriever.reranker is None


def test_the_reranker_sees_only_what_the_principal_may_see(indexed, embedder):
    recording = Recording()
    assert isinstance(recording, Reranker)
    retriever = Retriever(indexed, embedder, RetrievalSettings(candidates=10), reranker=recording)
    plain = Retriever(indexed, embedder, RetrievalSettings(candidates=10))
    for user in (None, "olga"):
        for mode in SearchMode:
            result = retriever.search("deploy rollback", user=user, k=2, mode=mode)
            given = recording.given[-1]
            visible = {h.external_id for h in plain.search("deploy rollback", user=user, k=10, mode=mode).hits}
            assert {h.external_id for h in given} == visible, "it gets the candidates, not just k"
            assert ("secret" in visible) is (user == "olga"), "row-level security decided, not the reranker"
            assert [h.chunk_id for h in result.hits] == [h.chunk_id for h in reversed(given)][:2]


def test_mmr_from_settings_prunes_near_copies(indexed, embedder):
    # convex fusion's scores keep the near-copies' lead over the rest (RRF's 1/(60+r) flattened it), so
    # dropping the copy takes more diversity than the 0.5 that sufficed under RRF
    settings = RetrievalSettings(reranker="mmr", reranker_options={"diversity": 0.7})
    retriever = Retriever(indexed, embedder, settings)
    assert retriever.reranker is not None and retriever.reranker.name.startswith("mmr")
    plain = Retriever(indexed, embedder).search(ROLLBACK, user=None, k=2).hits
    reranked = retriever.search(ROLLBACK, user=None, k=2).hits
    assert {h.external_id for h in plain} == {"runbook", "runbook-copy"}
    assert len(reranked) == 2 and reranked[0].external_id == plain[0].external_id
    assert reranked[1].external_id not in {"runbook", "runbook-copy", "secret"}


def test_a_bad_reranker_option_names_its_section(indexed, embedder):
    with pytest.raises(ConfigError, match=r"\[retrieval.reranker_options\]"):
        Retriever(indexed, embedder, RetrievalSettings(reranker="mmr", reranker_options={"diversity": 2}))
    with pytest.raises(ConfigError, match="no plugin named 'nope'"):
        Retriever(indexed, embedder, RetrievalSettings(reranker="nope"))
