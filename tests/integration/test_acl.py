"""Access control is enforced by PostgreSQL itself, for every query path."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from citeline.access.principals import PrincipalStore
from citeline.domain import Access, Principal, SearchMode
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever
from tests.support.connectors import ListConnector, doc

pytestmark = pytest.mark.integration

USERS = ["ann", "ben", "cid", "dee"]
GROUPS = ["eng", "hr", "sales", "legal"]
WORDS = ["invoice", "robot", "salary", "deploy", "warranty", "battery", "contract", "incident", "refund", "laser"]

access_st = st.builds(
    Access,
    users=st.lists(st.sampled_from(USERS), max_size=2).map(tuple),
    groups=st.lists(st.sampled_from(GROUPS), max_size=2).map(tuple),
    public=st.sampled_from([False, False, True]),  # mostly private
)
docs_st = st.lists(st.tuples(st.lists(st.sampled_from(WORDS), min_size=3, max_size=8), access_st),
                   min_size=3, max_size=18)
principal_st = st.builds(Principal, user=st.sampled_from(USERS),
                         groups=st.lists(st.sampled_from(GROUPS), max_size=3).map(tuple))


def _visible(access: Access, principal: Principal | None) -> bool:
    if access.public:
        return True
    return principal is not None and bool(set(access.tokens) & set(principal.tokens))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(docs=docs_st, principals=st.lists(principal_st, min_size=1, max_size=3, unique_by=lambda p: p.user),
       queries=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join), min_size=1,
                        max_size=2))
def test_search_never_returns_a_chunk_outside_the_principals_access(db, embedder, chunker, docs, principals,
                                                                    queries):
    corpus = [doc(f"p{i}", " ".join(words), access=access) for i, (words, access) in enumerate(docs)]
    SyncRunner(db, embedder, chunker).run("prop", "list", ListConnector(corpus))
    store = PrincipalStore(db)
    for known in store.list():
        store.remove(known.user)
    for p in principals:
        store.put(p)
    access_of = {d.external_id: d.access for d in corpus}
    retriever = Retriever(db, embedder)
    for principal in [*principals, None]:
        user = principal.user if principal else None
        allowed = {ext for ext, acc in access_of.items() if _visible(acc, principal)}
        for query in queries:
            for mode in SearchMode:
                hits = retriever.search(query, user=user, k=len(corpus) + 5, mode=mode).hits
                returned = {h.external_id for h in hits}
                assert returned <= allowed, f"{user} got {returned - allowed} via {mode.value}"
                if mode is SearchMode.DENSE:  # with k above the corpus size every visible chunk comes back
                    assert returned == allowed


def test_a_raw_query_as_an_unprivileged_role_sees_only_permitted_rows(db, embedder, chunker, pg_url):
    corpus = [
        doc("pub", "public handbook", access=Access.everyone()),
        doc("eng", "engineering runbook", access=Access(groups=("eng",))),
        doc("hr", "salary bands", access=Access(groups=("hr",))),
        doc("own", "carol's review", access=Access(users=("carol",))),
    ]
    SyncRunner(db, embedder, chunker).run("wiki", "list", ListConnector(corpus))
    PrincipalStore(db).put(Principal("alice", ("eng",)))
    PrincipalStore(db).put(Principal("carol", ("hr",)))
    role = f"probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT citeline_reader TO {}").format(sql.Identifier(role)))
    try:
        probe_url = psycopg.conninfo.make_conninfo(pg_url, user=role)
        with psycopg.connect(probe_url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(db.namespace)))

            def visible(c: psycopg.Connection) -> set[str]:
                rows = c.execute("SELECT d.external_id FROM chunks c JOIN documents d ON d.id = c.document_id")
                docs = {r[0] for r in c.execute("SELECT external_id FROM documents")}
                chunk_docs = {r[0] for r in rows}
                assert chunk_docs == docs
                return docs

            def as_app(user: str | None) -> set[str]:  # unfiltered SQL as the application's reader
                with db.reader(user) as c:
                    return visible(c)

            assert as_app(None) == {"pub"}
            assert as_app("alice") == {"pub", "eng"}
            assert as_app("carol") == {"pub", "hr", "own"}
            assert as_app("mallory") == {"pub"}  # not a principal: public only
            # the bare login may set citeline.user, but the policies only accept an identity set by
            # citeline_login(), which it may not call (migration 0006)
            for user in (None, "alice", "carol", "mallory"):
                conn.execute("SELECT set_config('citeline.user', %s, false)", (user or "",))
                assert visible(conn) == {"pub"}
                assert conn.execute("SELECT count(*) FROM principals").fetchone() == (0,)
            with db.reader("alice") as c:
                assert [r[0] for r in c.execute("SELECT user_id FROM principals")] == ["alice"]
            for statement in ("DELETE FROM chunks", "UPDATE documents SET public = true",
                              "SELECT * FROM sync_failures", "SET ROLE citeline_writer",
                              "SELECT citeline_login('alice')", "SELECT * FROM audit_log",
                              "UPDATE principals SET groups = '{hr}'"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_filtered_hnsw_search_still_returns_k_results(db, embedder, chunker):
    """10% of rows visible: the iterative index scan keeps going until it has k visible rows."""
    import numpy as np

    from citeline.db import index as store
    from citeline.domain import Document

    rng = np.random.default_rng(7)
    n = 3000
    with db.writer() as conn:
        source_id, _ = store.ensure_source(conn, "bulk", "list")
        batch = []
        for i in range(n):
            access = Access(groups=("eng",)) if i % 10 == 0 else Access(groups=("other",))
            d = Document(external_id=f"b{i}", title=f"b{i}", text=f"row {i}", access=access)
            vec = rng.standard_normal(embedder.dimension).astype(np.float32)
            batch.append(store.PreparedDocument(d, "h", [_chunk(i)], (vec / np.linalg.norm(vec))[None, :]))
        store.replace_documents(conn, source_id, batch, db.ts_config)
    PrincipalStore(db).put(Principal("eve", ("eng",)))
    retriever = Retriever(db, embedder)
    for query in ("row", "something unrelated", "alpha beta"):
        hits = retriever.search(query, user="eve", k=10, mode=SearchMode.DENSE).hits
        assert len(hits) == 10
        assert all(int(h.external_id[1:]) % 10 == 0 for h in hits)


def _chunk(i: int):
    from citeline.domain import Chunk

    return Chunk(0, f"row {i}", 0, len(f"row {i}"))
