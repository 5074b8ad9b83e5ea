"""citeline inside LlamaIndex and LangChain, on the real index (embedded PostgreSQL, real embedder):

* a LlamaIndex ``RetrieverQueryEngine`` and a LangChain LCEL chain built on citeline's retriever as alice (hr)
  and as bob (eng) return only what each may see, in process and over HTTP (the real app, ``POST /v1/search``);
* a bad API key is refused with a clear error; a search over HTTP leaves an audit row;
* LlamaHub reader sources (SimpleDirectoryReader, one source per access) sync, re-sync unchanged, and delete
  a removed file like any source.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from citeline.domain import Principal
from citeline.errors import AuthError, PrincipalError
from citeline.facade import Citeline
from citeline.settings import Settings

pytestmark = pytest.mark.integration

SALARY = "Salary band S3 pays 71,500 euros a year"  # hr only
ROLLBACK = "Roll back the fleet API with deployctl revert 4411"  # eng only
HOLIDAY = "The office is closed on 24 December"  # everyone
FILES = {
    "hr/salary-bands.md": f"# Salary bands\n\n{SALARY}. Band S4 pays more. Salaries are reviewed in March.",
    "hr/leave.md": "# Parental leave\n\nParental leave is sixteen weeks at full pay for every parent.",
    "eng/rollback.md": f"# Rollback\n\n{ROLLBACK}. The pipeline deploys every weekday at noon.",
    "eng/oncall.md": "# On-call\n\nThe on-call engineer answers pages within fifteen minutes.",
    "public/holidays.md": f"# Holidays\n\n{HOLIDAY}. Salaries and deploys do not change on holidays.",
}
SOURCES = [("hr", 'groups = ["hr"]'), ("eng", 'groups = ["eng"]'), ("public", "public = true")]


def write_corpus(root: Path) -> None:
    for rel, text in FILES.items():
        path = root / "kb" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def config_text(root: Path) -> str:
    """One llamahub source per folder; each source's access is what its documents take."""
    out = [f'home = "{root / "home"}"\n']
    for name, access in SOURCES:
        out.append(f'[[sources]]\nname = "{name}"\nconnector = "llamahub"\naccess = {{ {access} }}\n'
                   f'config = {{ reader = "llama_index.core:SimpleDirectoryReader", path = "kb/{name}", '
                   f'base_url = "https://kb.example/{name}" }}\n')
    return "\n".join(out)


@pytest.fixture(scope="module")
def cl(tmp_path_factory, pg_url, embedder) -> Iterator[Citeline]:
    root = tmp_path_factory.mktemp("integrations")
    write_corpus(root)
    (root / "citeline.toml").write_text(config_text(root))
    namespace = f"int_{uuid.uuid4().hex[:10]}"
    settings = Settings.load(root / "citeline.toml", database_url=pg_url, database={"namespace": namespace},
                             generation={"backend": "extractive"})
    try:
        with Citeline(settings, embedder=embedder) as citeline:
            reports = citeline.sync()
            assert all(r.status == "succeeded" for r in reports), reports
            citeline.admin.add_principal(Principal("alice", ("hr",)), actor="test")
            citeline.admin.add_principal(Principal("bob", ("eng",)), actor="test")
            yield citeline
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


QUESTIONS = ["What does salary band S3 pay?", "How do I roll back the fleet API?", "When is the office closed?"]
MAY_SEE = {"alice": {"hr", "public"}, "bob": {"eng", "public"}}
SECRET_OF = {"hr": SALARY, "eng": ROLLBACK}


def check_only_allowed(user: str, sources: list[str], texts: list[str]) -> None:
    assert sources, f"{user} got nothing"
    assert set(sources) <= MAY_SEE[user], f"{user} saw {set(sources) - MAY_SEE[user]}"
    for source, secret in SECRET_OF.items():
        if source not in MAY_SEE[user]:
            assert not any(secret in t for t in texts), f"{user} got {source}'s text"


# -- LlamaIndex ------------------------------------------------------------------------------------

def llama_engine(retriever):
    from llama_index.core.llms.mock import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText

    # response mode no_text: the engine retrieves and returns its source nodes without calling the LLM (MockLLM
    # only stands in for the default, an OpenAI client that needs a key; it is never called)
    return RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()))


def test_a_llamaindex_query_engine_returns_only_what_each_principal_may_see(cl):
    from citeline.integrations.llama_index import CitelineRetriever

    for user in ("alice", "bob"):
        engine = llama_engine(CitelineRetriever.in_process(cl, user, k=5))
        for question in QUESTIONS:
            response = engine.query(question)
            nodes = response.source_nodes
            check_only_allowed(user, [n.node.metadata["source"] for n in nodes], [n.node.get_content() for n in nodes])
        own = engine.query(QUESTIONS[0] if user == "alice" else QUESTIONS[1]).source_nodes[0]
        secret = SALARY if user == "alice" else ROLLBACK
        assert secret in own.node.get_content()  # each finds its own document first
        meta = own.node.metadata
        assert meta["title"] in ("Salary bands", "Rollback") and meta["url"].startswith("https://kb.example/")
        assert meta["external_id"].endswith(".md") and isinstance(meta["chunk_id"], int)
        assert own.score == pytest.approx(meta["score"])
        span = (own.node.start_char_idx, own.node.end_char_idx)
        document = FILES[f"{meta['source']}/{meta['external_id']}"]
        assert document[span[0]:span[1]] == own.node.get_content()  # the citation's exact span
        retriever = CitelineRetriever.in_process(cl, user, k=5)
        ids = [n.node.node_id for n in retriever.retrieve(QUESTIONS[0])]
        assert [n.node.node_id for n in asyncio.run(retriever.aretrieve(QUESTIONS[0]))] == ids  # async engines too


def test_an_unknown_principal_is_refused_when_the_retriever_is_made(cl):
    from citeline.integrations.llama_index import CitelineRetriever

    with pytest.raises(PrincipalError, match="unknown principal 'mallory'"):
        CitelineRetriever.in_process(cl, "mallory")


# -- LangChain ---------------------------------------------------------------------------------------

def lc_chain(retriever):
    from langchain_core.runnables import RunnableLambda

    def cite(docs) -> str:
        return "\n".join(f"[{n}] {d.metadata['title']} ({d.metadata['source']}): {d.page_content}"
                         for n, d in enumerate(docs, 1))

    return retriever | RunnableLambda(cite)


def test_a_langchain_chain_returns_only_what_each_principal_may_see(cl):
    from citeline.integrations.langchain import CitelineRetriever

    for user in ("alice", "bob"):
        retriever = CitelineRetriever.in_process(cl, user, k=5)
        for question in QUESTIONS:
            docs = retriever.invoke(question)
            check_only_allowed(user, [d.metadata["source"] for d in docs], [d.page_content for d in docs])
            text = lc_chain(retriever).invoke(question)
            assert text.startswith("[1] ")
            for source, secret in SECRET_OF.items():
                assert (secret in text) <= (source in MAY_SEE[user])
        assert HOLIDAY in lc_chain(retriever).invoke(QUESTIONS[2])


# -- over HTTP: the real app, POST /v1/search ---------------------------------------------------------

@pytest.fixture(scope="module")
def http(cl):
    from fastapi.testclient import TestClient

    from citeline.serving.app import create_app

    keys = {user: cl.admin.create_key(user, actor="test").secret for user in ("alice", "bob")}
    with TestClient(create_app(cl)) as client:
        yield client, keys


def test_over_http_each_key_sees_only_its_principals_documents_and_is_audited(cl, http):
    from citeline.integrations import langchain, llama_index
    from citeline.integrations._hits import OverHTTP

    client, keys = http
    for user in ("alice", "bob"):
        source = OverHTTP("http://testserver", keys[user], k=5, client=client)
        nodes = llama_engine(llama_index.CitelineRetriever(source)).query(QUESTIONS[0]).source_nodes
        check_only_allowed(user, [n.node.metadata["source"] for n in nodes], [n.node.get_content() for n in nodes])
        docs = langchain.CitelineRetriever(source=source).invoke(QUESTIONS[1])
        check_only_allowed(user, [d.metadata["source"] for d in docs], [d.page_content for d in docs])
    rows = [r for r in cl.audit.records(kind="search") if r.payload.get("via") == "rest"]
    assert {r.principal for r in rows} == {"alice", "bob"}
    assert all(r.payload["shown"] for r in rows)


def test_over_http_a_bad_key_raises_a_clear_error_and_never_returns_hits(http):
    from citeline.integrations._hits import OverHTTP
    from citeline.integrations.langchain import CitelineRetriever

    client, keys = http
    for bad in ("cl_not-a-real-key", keys["alice"][:-2] + "xx"):
        retriever = CitelineRetriever(source=OverHTTP("http://testserver", bad, client=client))
        with pytest.raises(AuthError, match=r"refused the API key \(401") as err:
            retriever.invoke(QUESTIONS[0])
        assert bad not in str(err.value) and bad not in repr(retriever)  # the key is never echoed


def test_over_http_an_unreachable_server_names_the_url():
    from citeline.errors import CitelineError
    from citeline.integrations.llama_index import CitelineRetriever

    retriever = CitelineRetriever.over_http("http://127.0.0.1:9", "cl_whatever", timeout=2)
    with pytest.raises(CitelineError, match=r"cannot reach the citeline server at http://127.0.0.1:9"):
        retriever.retrieve("anything")


# -- LlamaHub reader sources --------------------------------------------------------------------------

def test_reader_sources_sync_resync_unchanged_and_delete_a_removed_file(cl):
    again = {r.source: r for r in cl.sync()}
    assert {s: (r.added, r.updated, r.unchanged, r.deleted) for s, r in again.items()} == {
        "hr": (0, 0, 2, 0), "eng": (0, 0, 2, 0), "public": (0, 0, 1, 0)}
    home = Path(cl.settings.resolve_path("kb/eng"))
    (home / "rollback.md").unlink()
    try:
        report = cl.sync("eng")[0]
        assert (report.deleted, report.unchanged) == (1, 1)
        hits = cl.search("How do I roll back the fleet API?", user="bob", k=10).hits
        assert hits and not any(ROLLBACK in h.text for h in hits)
        assert "rollback.md" not in {h.external_id for h in hits}
    finally:
        (home / "rollback.md").write_text(FILES["eng/rollback.md"], encoding="utf-8")
        assert cl.sync("eng")[0].added == 1
