"""Lexical search ranks with BM25 over corpus statistics that the sync keeps current, under RLS."""

from __future__ import annotations

import psycopg
import pytest

from citeline.access.principals import PrincipalStore
from citeline.db.index import lexicon_is_stale, refresh_lexicon
from citeline.domain import Access, Principal, SearchMode
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever
from citeline.settings import RetrievalSettings
from tests.support.connectors import ListConnector, doc

pytestmark = pytest.mark.integration

FILLER = ["harbour", "lantern", "meadow", "orchard", "pebble", "quarry", "ribbon", "saddle", "timber", "velvet"]


def _corpus() -> list:
    """Ten chunks mention "protocol" (one of them three times); one mentions "zebra" once."""
    docs = [doc(f"c{i}", f"The protocol covers {FILLER[i]} handling.", title=f"note {i}") for i in range(9)]
    docs.append(doc("common", "Protocol protocol protocol: the protocol for the quarry.", title="note 9"))
    docs.append(doc("rare", "A zebra was seen near the meadow.", title="note 10"))
    return docs


def _lexical(retriever: Retriever, query: str, user: str | None = None, k: int = 20) -> list[str]:
    return [h.external_id for h in retriever.search(query, user=user, k=k, mode=SearchMode.LEXICAL).hits]


def test_rare_terms_outrank_common_ones(db, embedder, chunker):
    SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector(_corpus()))
    retriever = Retriever(db, embedder)
    ranked = _lexical(retriever, "zebra protocol")
    # ts_rank without IDF put the chunk repeating the common term first; BM25 weighs the rare term
    assert ranked[0] == "rare"
    assert ranked[1] == "common"  # among the common-term chunks, term frequency still counts
    assert set(ranked) == {d.external_id for d in _corpus()}
    scores = {h.external_id: h.lexical_score for h in
              retriever.search("zebra protocol", user=None, k=20, mode=SearchMode.LEXICAL).hits}
    assert scores["rare"] > 3 * scores["common"]


def test_the_row_budget_matches_through_the_rarest_terms_only(db, embedder, chunker):
    SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector(_corpus()))
    tight = Retriever(db, embedder, RetrievalSettings(lexical_row_budget=1))
    assert _lexical(tight, "zebra protocol") == ["rare"]  # "protocol" (10 chunks) is over the budget
    # the rarest term is always used, even if it alone is over the budget
    assert set(_lexical(tight, "protocol")) == {f"c{i}" for i in range(9)} | {"common"}
    # a matched row is scored with all the question's terms, also those not used for matching
    both = doc("both", "A zebra ignores the protocol.", title="note 11")
    SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector([*_corpus(), both]))
    assert _lexical(tight, "zebra protocol") == ["both", "rare"]


def test_statistics_follow_the_syncs(db, embedder, chunker):
    corpus = _corpus()
    runner = SyncRunner(db, embedder, chunker)
    report = runner.run("notes", "list", ListConnector(corpus))
    assert report.lexicon_seconds is not None

    def df(lexeme: str) -> int:  # corpus-wide statistics: only in an application transaction (migration 0006)
        with db.reader(None) as conn:
            return dict(conn.execute("SELECT lexeme, ndoc FROM lexicon_lookup(%s)", ([lexeme],)).fetchall())[lexeme]

    def stats() -> tuple[int, float]:
        with db.writer() as conn:
            row = conn.execute("SELECT chunks, avg_length FROM lexicon_stats").fetchone()
            assert not lexicon_is_stale(conn)
        return row[0], row[1]

    assert df("protocol") == 10 and df("zebra") == 1 and df("giraff") == 0
    assert stats()[0] == len(corpus)

    # nothing changed: no refresh
    assert runner.run("notes", "list", ListConnector(corpus)).lexicon_seconds is None

    # two new documents, one removed (pruned: not in the listing), one edited
    edited = doc("c0", "The zebra herd crossed the harbour.", title="note 0")
    changed = [edited, *corpus[1:8], *corpus[9:],
               doc("n1", "A giraffe and a zebra.", title="note 12"), doc("n2", "Giraffe protocol.", title="note 13")]
    report = runner.run("notes", "list", ListConnector(changed))
    assert report.lexicon_seconds is not None
    assert df("zebra") == 3 and df("giraff") == 2 and df("protocol") == 9  # c0 edited, c8 deleted, n2 added
    assert stats()[0] == len(changed)
    ranked = _lexical(Retriever(db, embedder), "giraffe")
    assert set(ranked) == {"n1", "n2"}

    # chunks written outside a sync make the statistics stale until the next refresh
    with db.writer() as conn:
        conn.execute("DELETE FROM chunks WHERE document_id = (SELECT id FROM documents WHERE external_id = 'n1')")
        assert lexicon_is_stale(conn)
    with db.writer() as conn:
        assert refresh_lexicon(conn, if_stale=True) is not None
        assert refresh_lexicon(conn, if_stale=True) is None
    assert df("giraff") == 1


def test_lexical_search_never_returns_rows_outside_the_principals_access(db, embedder, chunker):
    corpus = [
        *_corpus(),
        doc("secret", "Zebra migration plan for the protocol team.", title="hr 1", access=Access(groups=("hr",))),
        doc("mine", "Zebra notes.", title="own 1", access=Access(users=("dee",))),
    ]
    SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector(corpus))
    PrincipalStore(db).put(Principal("hana", ("hr",)))
    PrincipalStore(db).put(Principal("eli", ("eng",)))
    PrincipalStore(db).put(Principal("dee", ()))
    for settings in (RetrievalSettings(), RetrievalSettings(lexical_row_budget=1)):
        retriever = Retriever(db, embedder, settings)
        for mode in (SearchMode.LEXICAL, SearchMode.HYBRID):
            def ids(user: str | None, retriever: Retriever = retriever, mode: SearchMode = mode) -> set[str]:
                return {h.external_id for h in retriever.search("zebra protocol", user=user, k=50, mode=mode).hits}

            assert {"secret", "mine"} & ids(None) == set()
            assert {"secret", "mine"} & ids("eli") == set()
            assert "secret" in ids("hana") and "mine" not in ids("hana")
            assert "mine" in ids("dee") and "secret" not in ids("dee")
            assert {"secret", "mine"} & ids("mallory") == set()


def test_stopwords_unknown_words_and_odd_characters_find_nothing_without_error(db, embedder, chunker):
    SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector(_corpus()))
    retriever = Retriever(db, embedder)
    for query in ("the of and to", "", "   ", "xyzzyq frobnicatorix", "!!! ??? ---", "o'neil \\ 'a & b' :* | !(x)"):
        assert retriever.search(query, user=None, k=10, mode=SearchMode.LEXICAL).hits == ()
        hybrid = retriever.search(query, user=None, k=10, mode=SearchMode.HYBRID).hits
        assert all(h.lexical_rank is None for h in hybrid)  # dense results only
    # lexemes with quotes and backslashes are quoted, not parsed as tsquery syntax
    SyncRunner(db, embedder, chunker).run("odd", "list", ListConnector(
        [doc("odd", r"Path C:\temp\zebra_x and o'hare's a\'b", title="odd")]))
    assert "odd" in _lexical(retriever, r"C:\temp\zebra_x a\'b")


def test_the_reader_cannot_list_the_vocabulary_nor_match_hidden_rows(db, embedder, chunker):
    corpus = [*_corpus(), doc("secret", "Zebra salary bands.", title="hr 1", access=Access(groups=("hr",)))]
    SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector(corpus))
    PrincipalStore(db).put(Principal("hana", ("hr",)))
    with db.reader(None) as conn:
        assert conn.execute("SELECT ndoc FROM lexicon_lookup(ARRAY['zebra'])").fetchone() == (2,)  # counts all
        assert conn.execute("SELECT chunks FROM lexicon_corpus_global()").fetchone() == (12,)
        # the default (retrieval.lexical_statistics = "visible"): only what the principal may see
        assert conn.execute("SELECT ndoc FROM lexicon_lookup_visible(ARRAY['zebra'])").fetchone() == (1,)
        assert conn.execute("SELECT chunks FROM lexicon_corpus_visible()").fetchone() == (11,)
    with db.reader("hana") as conn:
        assert conn.execute("SELECT ndoc FROM lexicon_lookup_visible(ARRAY['zebra'])").fetchone() == (2,)
        assert conn.execute("SELECT chunks FROM lexicon_corpus_visible()").fetchone() == (12,)

    def matched(user: str | None) -> set[str]:
        # lexical_match() reads through the GIN index as citeline_lexicon, but only rows the caller may see
        with db.reader(user) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM lexical_match('zebra | salari')")]
        with db.writer() as conn:
            return {r[0] for r in conn.execute(
                "SELECT d.external_id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
                (ids,))}

    assert matched(None) == {"rare"}
    assert matched("mallory") == {"rare"}
    assert matched("hana") == {"rare", "secret"}
    for statement in ("SELECT lexeme FROM lexemes", "DELETE FROM lexicon_stats", "UPDATE lexemes SET ndoc = 1",
                      "SELECT * FROM class_lexemes", "SELECT chunks FROM lexicon_stats"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.reader(None) as conn:
            conn.execute(statement)
