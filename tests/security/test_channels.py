"""Information channels (issue 13, item 9): what a principal can learn about what it may not see.

* BM25 statistics: the scores and order of the results a principal may see must not depend on the text
  of documents it may not see (statistics per visibility class; ``retrieval.lexical_statistics``).
* Database logins: a login granted only ``citeline_reader`` cannot read the audit log and cannot
  become another principal by setting ``citeline.user`` (identity through ``citeline_login()``).
* Model names: an unknown model's 404 lists only the caller's own team's adapters.

All against a real ``citeline serve`` on the real embedded PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from citeline.facade import Citeline
from citeline.settings import Settings
from tests.e2e.conftest import Server, embedded_model_server, run_server

pytestmark = [pytest.mark.security, pytest.mark.e2e]

RARE, COMMON = "quorvex", "plimsatt"  # invented words: no other page holds them
QUESTION = f"{RARE} {COMMON}"


def _cli(srv: Server, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", "from citeline.cli import main; main()", *args], env=srv.env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _hidden_pages(wiki: Path, *, with_term: bool) -> None:
    folder = wiki / "vault"
    folder.mkdir(exist_ok=True)
    for i in range(40):
        word = RARE if with_term else "ledger"
        (folder / f"note-{i:02d}.md").write_text(
            f"---\ntitle: Vault note {i}\naccess: {{groups: [vault]}}\n---\n"
            f"Vault note {i} records the {word} entry for quarter {i % 4} and the archive shelf {i}.\n")


def _visible(srv: Server, user: str) -> list[tuple[str, float]]:
    r = httpx.post(f"{srv.url}/v1/ask", json={"question": QUESTION},
                   headers={"Authorization": f"Bearer {srv.keys[user]}"}, timeout=120)
    assert r.status_code == 200, r.text
    return [(s["external_id"], s["score"]) for s in r.json()["sources"]]


def test_hidden_pages_do_not_change_the_scores_or_order_of_visible_results(server: Server):
    """bob (staff) asks a two-word question; 40 pages he may not see hold one of the words, or not."""
    wiki = server.config.parent / "wiki"
    for i in range(2):  # the rare word on 2 visible pages, the other on 5: without hidden pages, rare ranks first
        (wiki / f"rare-{i}.md").write_text(f"# Rare {i}\n\nThe {RARE} gauge on bench {i} reads the torque.\n")
    for i in range(5):
        (wiki / f"common-{i}.md").write_text(f"# Common {i}\n\nThe {COMMON} lever on rack {i} sets the torque.\n")
    _hidden_pages(wiki, with_term=False)
    _cli(server, "sync", "wiki")
    without = _visible(server, "bob")
    _hidden_pages(wiki, with_term=True)
    _cli(server, "sync", "wiki")
    hidden = server.owner_sql("SELECT count(*) FROM chunks WHERE NOT public AND acl = '{g:vault}' AND text LIKE %s",
                              f"%{RARE}%")[0][0]
    assert hidden == 40  # the hidden pages hold the word now, and the statistics were refreshed by the sync
    with_term = _visible(server, "bob")
    assert {e for e, _ in without} & {f"rare-{i}.md" for i in range(2)}, without  # the question finds them
    assert not any(e.startswith("vault/") for e, _ in with_term)  # bob never sees the vault
    assert with_term == without  # same documents, same order, same scores


def test_a_reader_login_cannot_read_the_audit_or_impersonate(server: Server):
    """A raw database login granted only citeline_reader: no audit rows, no one else's documents."""
    role = f"probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT citeline_reader TO {}").format(sql.Identifier(role)))
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(server.pg_url, user=role), autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(server.namespace)))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT count(*) FROM audit_log")
            public = {r[0] for r in conn.execute("SELECT external_id FROM documents")}
            for user in ("alice", "carol", "ops"):
                conn.execute("SELECT set_config('citeline.user', %s, false)", (user,))
                assert {r[0] for r in conn.execute("SELECT external_id FROM documents")} == public
                assert conn.execute("SELECT count(*) FROM principals").fetchone() == (0,)
                with conn.transaction():  # the same within a transaction, with a forged identity MAC
                    conn.execute("SELECT set_config('citeline.user', %s, true),"
                                 " set_config('citeline.identity', repeat('0', 64), true)", (user,))
                    assert {r[0] for r in conn.execute("SELECT external_id FROM documents")} == public
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT citeline_login('alice')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM identity_key")
            # nor corpus-wide statistics, which count documents it may not see (only the application's
            # transactions get them, for retrieval.lexical_statistics = "global")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT chunks FROM lexicon_stats")
            assert conn.execute("SELECT * FROM lexicon_lookup(ARRAY['rollback', 'deploy'])").fetchall() == []
            assert conn.execute("SELECT chunks FROM lexicon_corpus_visible()").fetchone()[0] \
                == conn.execute("SELECT count(*) FROM chunks").fetchone()[0]  # its visible statistics: public only
        # the application, through the same policies, still sees per principal
        alice_only = server.owner_sql("SELECT external_id FROM documents WHERE NOT public"
                                      " AND acl && '{g:engineering}' AND NOT acl && '{g:staff}'")
        assert alice_only  # there is something only engineering may read
        assert not {e for (e,) in alice_only} & public
        r = httpx.post(f"{server.url}/v1/ask", json={"question": "How do I roll back a bad deploy?"},
                       headers={"Authorization": f"Bearer {server.keys['alice']}"}, timeout=120)
        assert r.status_code == 200 and any("engineering" in s["external_id"] for s in r.json()["sources"]), r.text
        r = httpx.get(f"{server.url}/v1/admin/audit/verify",
                      headers={"Authorization": f"Bearer {server.keys['admin']}"}, timeout=60)
        assert r.status_code == 200 and r.json()["ok"], r.text
    finally:
        with psycopg.connect(server.pg_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- model names ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server(smollm2_dir, tmp_path_factory) -> Iterator[str]:
    """`citeline model-server` (the embedded backend) on loopback: what the openai backend talks to."""
    with embedded_model_server(smollm2_dir, tmp_path_factory.mktemp("ms")) as url:
        yield url


@pytest.mark.slow
def test_an_unknown_model_404_lists_only_the_callers_adapters(model_server, smollm2_dir, pg_url, embedder,
                                                              tmp_path_factory):
    from tests.support.adapters import make_adapter

    tmp = tmp_path_factory.mktemp("teams")
    env = {"CITELINE_GENERATION__OPTIONS__BASE_URL": model_server,
           "CITELINE_GENERATION__OPTIONS__MODEL": smollm2_dir.name,
           "CITELINE_GENERATION__OPTIONS__TOKENIZER": str(smollm2_dir), "CITELINE_GENERATION__MAX_TOKENS": "4",
           "CITELINE_GENERATION__OPTIONS__RETRIES": "0", "CITELINE_ADAPTERS__BASE_MODEL_PATH": str(smollm2_dir),
           "CITELINE_ADAPTERS__STORE": str(tmp / "store"), "CITELINE_ADAPTERS__CACHE_S": "0.2"}
    overrides = {"generation": {"backend": "openai", "options": {"base_url": model_server, "model": smollm2_dir.name,
                                                              "tokenizer": str(smollm2_dir), "retries": 0}},
                 "adapters": {"base_model_path": str(smollm2_dir), "store": str(tmp / "store"), "cache_s": 0.2}}
    with run_server(tmp, pg_url, embedder, backend="openai", extra_env=env) as srv:
        settings = Settings.load(srv.config, database_url=pg_url, database={"namespace": srv.namespace}, **overrides)
        with Citeline(settings, embedder=embedder) as admin:
            eng = admin.adapters.register(make_adapter(smollm2_dir, tmp / "eng", seed=21), team="engineering",
                                         actor="test")
            sales = admin.adapters.register(make_adapter(smollm2_dir, tmp / "sales", seed=22), team="sales",
                                           actor="test")
            admin.adapters.promote(eng.served_name, actor="test", force=True, drain_s=0)
            admin.adapters.promote(sales.served_name, actor="test", force=True, drain_s=0)
        time.sleep(0.5)  # the server's team -> adapter cache
        served = httpx.get(f"{model_server.removesuffix('/v1')}/v1/models", timeout=10).json()["data"]
        listed = {m["id"] for m in served}
        assert {eng.served_name, sales.served_name} <= listed  # both teams' adapters are served

        def unknown(user: str, path: str) -> str:
            headers = {"Authorization": f"Bearer {srv.keys[user]}"}
            if path == "ask":
                r = httpx.post(f"{srv.url}/v1/ask", json={"question": "Hi", "model": "no-such-model"},
                               headers=headers, timeout=60)
            else:
                r = httpx.post(f"{srv.url}/v1/chat/completions", headers=headers, timeout=60,
                               json={"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 404, r.text
            return r.text

        for path in ("ask", "chat"):
            alice, bob = unknown("alice", path), unknown("bob", path)  # engineering, sales
            assert eng.served_name in alice and sales.served_name not in alice, alice
            assert sales.served_name in bob and eng.served_name not in bob, bob
            assert smollm2_dir.name in alice  # the base model is everyone's


# -- statistics follow access changes ---------------------------------------------------------------------


@pytest.mark.integration
def test_an_access_change_alone_refreshes_the_per_class_statistics(db, embedder, chunker):
    """Revoking a page (same text, new ACL) moves its chunks to another class: the next sync recomputes."""
    from citeline.access.principals import PrincipalStore
    from citeline.domain import Access, Principal
    from citeline.ingest.sync import SyncRunner
    from tests.support.connectors import ListConnector, doc

    def pages(vault_access: Access) -> list:
        return [doc("pub", "The harbour crane lifts containers.", title="crane"),
                doc("v1", f"The {RARE} ledger of the vault.", title="vault 1", access=vault_access),
                doc("v2", f"A second {RARE} ledger of the vault.", title="vault 2", access=vault_access)]

    PrincipalStore(db).put(Principal("dana", ("vault",)))
    runner = SyncRunner(db, embedder, chunker)
    runner.run("notes", "list", ListConnector(pages(Access(groups=("vault",)))))

    def seen_by(user: str | None) -> tuple[int, int]:
        with db.reader(user) as conn:
            (df,) = conn.execute("SELECT ndoc FROM lexicon_lookup_visible(ARRAY[%s])", (RARE,)).fetchone()
            (n,) = conn.execute("SELECT chunks FROM lexicon_corpus_visible()").fetchone()
        return df, n

    assert seen_by("dana") == (2, 3) and seen_by(None) == (0, 1)
    report = runner.run("notes", "list", ListConnector(pages(Access(groups=("other",)))))
    assert report.lexicon_seconds is not None  # no chunk was added or removed, yet the statistics were redone
    assert seen_by("dana") == (0, 1)  # dana no longer sees the vault: its words no longer count for her


@pytest.mark.integration
def test_global_statistics_remain_an_option_and_show_the_channel_they_open(db, embedder, chunker):
    """retrieval.lexical_statistics = "global" ranks with every chunk's statistics (hidden ones included)."""
    from citeline.domain import Access, SearchMode
    from citeline.ingest.sync import SyncRunner
    from citeline.retrieval.search import Retriever
    from citeline.settings import RetrievalSettings
    from tests.support.connectors import ListConnector, doc

    public = [doc(f"r{i}", f"The {RARE} gauge on bench {i}.", title=f"r{i}") for i in range(2)]
    public += [doc(f"c{i}", f"The {COMMON} lever on rack {i}.", title=f"c{i}") for i in range(5)]

    def scores(statistics: str, hidden_word: str) -> list[tuple[str, float]]:
        hidden = [doc(f"h{i}", f"Vault note {i}: the {hidden_word} entry.", title=f"h{i}",
                      access=Access(groups=("vault",))) for i in range(40)]
        SyncRunner(db, embedder, chunker).run("notes", "list", ListConnector([*public, *hidden]))
        retriever = Retriever(db, embedder, RetrievalSettings(lexical_statistics=statistics))  # type: ignore[arg-type]
        hits = retriever.search(QUESTION, user=None, k=10, mode=SearchMode.LEXICAL).hits
        return [(h.external_id, round(h.score, 9)) for h in hits]

    visible = scores("visible", "ledger"), scores("visible", RARE)
    global_ = scores("global", "ledger"), scores("global", RARE)
    assert visible[0] == visible[1] and len(visible[0]) == 7
    assert global_[0] != global_[1]  # the documented trade: hidden pages move the public scores
    assert {e for e, _ in global_[1]} == {e for e, _ in visible[1]}  # the same public documents, though
