"""The answer cache in the assistant: real embedded PostgreSQL (row-level access), the real embedder, the real
extractive backend (counted: a hit must not generate), the real verifier and audit log.

The property: a principal never receives a cached answer built from evidence it was not shown itself, and an
entry is shared exactly when the evidence shown was identical.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql

from citeline.access.audit import AuditLog
from citeline.access.principals import PrincipalStore
from citeline.answers.assistant import Assistant
from citeline.answers.cache import AnswerCache
from citeline.answers.prompt import REFUSAL
from citeline.contracts.generator import Generation, GenerationRequest
from citeline.domain import Access, Document, Principal
from citeline.facade import Citeline
from citeline.generation.extractive import ExtractiveBackend
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever
from citeline.settings import AnswerSettings, GenerationSettings, Settings
from tests.support.adapters import make_adapter
from tests.support.connectors import ListConnector, doc

pytestmark = pytest.mark.integration

GROUPS = ["eng", "hr", "sales"]
PRODUCTS = ["robot arm", "vacuum gripper", "conveyor", "laser cutter", "battery pack", "forklift"]
QUESTION = "How long is the warranty?"


class Counted(ExtractiveBackend):
    """The extractive backend, counting the answers it generates (a cache hit must generate none)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def generate(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        return super().generate(request)

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:
        self.calls += 1
        return (yield from super().stream(request))


def assistant(db, embedder, backend: Counted, cache: AnswerCache) -> Assistant:
    return Assistant(Retriever(db, embedder), backend, AuditLog(db, b"k" * 32),
                     answer=AnswerSettings(min_score=-1.0, evidence_k=4), generation=GenerationSettings(),
                     cache=cache)


def sync(db, embedder, chunker, docs) -> None:
    SyncRunner(db, embedder, chunker).run("wiki", "list", ListConnector(docs))


def world(db, embedder, chunker, docs: list[Document], *principals: Principal,
          backend: Counted | None = None) -> tuple[Assistant, Any, AnswerCache]:
    """``docs`` indexed and ``principals`` stored; an assistant over ``backend`` (a fresh Counted) and a fresh
    cache, with the backend and the cache to check."""
    sync(db, embedder, chunker, docs)
    for p in principals:
        PrincipalStore(db).put(p)
    backend = backend or Counted()
    cache = AnswerCache()
    return assistant(db, embedder, backend, cache), backend, cache


def warranty(i: int, years: int, access: Access) -> Document:
    return doc(f"w{i}", f"# {PRODUCTS[i].title()} warranty\n\nThe warranty of the {PRODUCTS[i]} lasts {years} "
                        f"years from delivery.", access=access)


def shown(answer) -> tuple[tuple[int, str], ...]:
    return tuple((c.chunk_id, c.snippet) for c in answer.sources)


access_st = st.builds(Access, groups=st.lists(st.sampled_from(GROUPS), max_size=2).map(tuple),
                      public=st.sampled_from([False, False, True]))
groups_st = st.lists(st.sampled_from(GROUPS), max_size=3, unique=True).map(tuple)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(accesses=st.lists(access_st, min_size=2, max_size=len(PRODUCTS)), first=groups_st, second=groups_st)
def test_two_principals_share_an_entry_only_when_shown_the_same_evidence(db, embedder, chunker, accesses, first,
                                                                          second):
    docs = [warranty(i, i + 2, a) for i, a in enumerate(accesses)]
    ann, ben = Principal("ann", first), Principal("ben", second)
    a, backend, _ = world(db, embedder, chunker, docs, ann, ben)
    visible = {p.user: {d.external_id for d in docs if d.access.public or set(d.access.groups) & set(p.groups)}
               for p in (ann, ben)}
    one = a.ask(QUESTION, ann)
    two = a.ask(QUESTION, ben)
    assert not one.cached
    for p, answer in ((ann, one), (ben, two)):
        assert {c.external_id for c in answer.sources} <= visible[p.user]
        assert {c.external_id for c in answer.citations} <= {c.external_id for c in answer.sources}
    same = shown(one) == shown(two) and bool(one.sources)  # nothing visible: refused before any prompt
    event(f"shared: {same}; refused: {one.refused}, {two.refused}")
    assert two.cached == same  # shared exactly when the evidence shown was identical
    assert backend.calls == int(bool(one.sources)) + int(bool(two.sources) and not same)
    if same:
        assert (two.text, two.refused) == (one.text, one.refused)
        assert two.audit_id != one.audit_id  # the asker's own audit row, its own sources
        # the same evidence; scores may differ in the last digits: hybrid scores are scaled to the best candidate
        # among the chunks each principal may see (retrieval.fusion = "convex"), never to hidden ones
        assert [replace(c, score=0.0) for c in two.sources] == [replace(c, score=0.0) for c in one.sources]
    assert a.ask(QUESTION, ben).cached == bool(two.sources)  # ben again: same evidence as before


def test_an_edited_or_deleted_document_misses(db, embedder, chunker):
    docs = [warranty(0, 2, Access.everyone()), warranty(1, 3, Access.everyone())]
    ann = Principal("ann", ())
    a, backend, _ = world(db, embedder, chunker, docs, ann)
    first = a.ask(QUESTION, ann)
    assert not first.cached and a.ask(QUESTION, ann).cached and backend.calls == 1
    sync(db, embedder, chunker, [warranty(0, 7, Access.everyone()), docs[1]])  # w0 edited: 7 years
    edited = a.ask(QUESTION, ann)
    assert not edited.cached and backend.calls == 2
    assert any("7 years" in c.snippet for c in edited.sources)
    sync(db, embedder, chunker, [docs[1]])  # w0 deleted
    deleted = a.ask(QUESTION, ann)
    assert not deleted.cached and backend.calls == 3
    assert {c.external_id for c in deleted.sources} == {"w1"}
    audit = {r.id: r.payload for r in AuditLog(db, b"k" * 32).records(kind="ask")}
    assert [audit[x.audit_id]["cached"] for x in (first, edited, deleted)] == [False, False, False]


class Gated(Counted):
    """Counted, and each generation waits until the test opens the gate (a slow model, held mid-answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail_first = False

    def _held(self) -> None:
        self.calls += 1
        assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("the model server went away")

    def generate(self, request: GenerationRequest) -> Generation:
        self._held()
        return ExtractiveBackend.generate(self, request)

    def stream(self, request: GenerationRequest) -> Generator[str, None, str]:  # what answer.verify = fallback uses
        self._held()
        return (yield from ExtractiveBackend.stream(self, request))


def leader_and_follower(a: Assistant, backend: Gated, cache: AnswerCache, leader: Principal,
                        follower: Principal) -> tuple[Any, Any]:
    """``leader`` asks and is held generating at the gate; ``follower`` asks the same question and waits on the
    leader's flight; then the gate opens. What each got: its answer, or the exception it raised."""
    results: dict[str, object] = {}

    def ask(p: Principal) -> None:
        try:
            results[p.user] = a.ask(QUESTION, p)
        except Exception as exc:  # the failure is the result under test
            results[p.user] = exc

    def until(check, what: str) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    calls = backend.calls
    first = threading.Thread(target=ask, args=(leader,))
    first.start()
    until(lambda: backend.calls == calls + 1, "the leader never started generating")
    second = threading.Thread(target=ask, args=(follower,))
    second.start()
    until(lambda: sum(cache.waiting(k) for k in list(cache._flights)) == 1, "the follower never waited")
    backend.gate.set()
    first.join(30)
    second.join(30)
    return results[leader.user], results[follower.user]


def test_identical_questions_at_once_generate_once_and_a_failed_leader_frees_its_followers(db, embedder, chunker):
    ann, ben = Principal("ann", ()), Principal("ben", ())
    a, backend, cache = world(db, embedder, chunker, [warranty(0, 2, Access.everyone()),
                                                      warranty(1, 3, Access.everyone())], ann, ben, backend=Gated())
    first, second = leader_and_follower(a, backend, cache, ann, ben)
    assert backend.calls == 1  # one generation for two identical questions asked at once
    assert not first.cached and second.cached and second.text == first.text
    assert second.audit_id != first.audit_id and shown(second) == shown(first)
    assert (cache.hits, cache.misses) == (1, 1)  # the follower counts once, as a hit
    assert not cache._flights  # nothing left in flight

    # a leader that fails stores nothing: its follower, woken, generates itself (no hang, no shared failure)
    cache.clear()
    backend.gate.clear()
    backend.calls = 0
    backend.fail_first = True
    failed, alone = leader_and_follower(a, backend, cache, ann, ben)
    assert isinstance(failed, Exception)
    assert not alone.cached and "2 years" in alone.text + " ".join(c.snippet for c in alone.sources)
    assert backend.calls == 2 and not cache._flights


def test_a_refusal_is_cached_only_as_a_refusal_for_the_same_evidence(db, embedder, chunker):
    outsider, engineer, other = Principal("ann", ()), Principal("ben", ("eng",)), Principal("cid", ("hr",))
    a, backend, cache = world(db, embedder, chunker, [
        doc("cafe", "# Cafeteria\n\nThe cafeteria opens at noon on weekdays.", access=Access.everyone()),
        warranty(0, 2, Access(groups=("eng",))),
    ], outsider, engineer, other)
    refused = a.ask(QUESTION, outsider)
    assert refused.refused and refused.text == REFUSAL and not refused.cached
    answered = a.ask(QUESTION, engineer)  # sees the warranty too: other evidence, not the cached refusal
    assert not answered.cached and not answered.refused and "2 years" in answered.text
    again = a.ask(QUESTION, other)  # sees only the cafeteria, like ann: her refusal, from the cache
    assert again.cached and again.refused and again.text == REFUSAL and shown(again) == shown(refused)
    assert again.as_dict()["cached"] is True and answered.as_dict()["cached"] is False  # the /v1/ask body
    assert backend.calls == 2 and (cache.hits, cache.misses) == (1, 2)
    audit = {r.id: r.payload for r in AuditLog(db, b"k" * 32).records(kind="ask")}
    assert audit[again.audit_id]["cached"] is True and audit[answered.audit_id]["cached"] is False


def test_streams_fill_the_cache_only_when_complete_and_a_hit_streams_the_cached_text(db, embedder, chunker):
    ann = Principal("ann", ())
    a, backend, cache = world(db, embedder, chunker, [warranty(0, 2, Access.everyone())], ann)
    abandoned = a.stream(QUESTION, ann)
    pieces = iter(abandoned)
    next(pieces)
    pieces.close()  # the client went away: nothing is kept
    assert len(cache) == 0
    full = a.stream(QUESTION, ann)
    text = "".join(full).strip()
    assert full.answer is not None and not full.answer.cached and len(cache) == 1
    hit = a.stream(QUESTION, ann)
    assert "".join(hit).strip() == text and hit.answer is not None and hit.answer.cached
    assert hit.answer.citations == full.answer.citations and a.ask(QUESTION, ann).cached
    assert backend.calls == 2  # the abandoned stream and the full one; the hits generated nothing


def test_sampled_answers_are_not_cached_and_the_key_holds_the_model(db, embedder, chunker):
    ann = Principal("ann", ())
    a, backend, cache = world(db, embedder, chunker, [warranty(0, 2, Access.everyone())], ann)
    assert a.ask(QUESTION, ann, temperature=0.7).cache == "off" and len(cache) == 0
    a.ask(QUESTION, ann)
    key = next(iter(cache._entries))
    assert cache._entries[key].model == "extractive"
    # clear(model) drops only that served name's entries (what a promotion does for the old version: below)
    assert cache.clear("support-0123456789ab") == 0 and cache.clear("extractive") == 1
    assert not a.ask(QUESTION, ann).cached


@pytest.mark.slow
def test_a_promoted_adapter_misses_and_the_promoting_process_drops_the_old_versions_entries(
        pg_url, embedder, chunker, smollm2_dir: Path, tmp_path: Path):
    """The facade's wiring, on the embedded backend (adapters in process): register, promote, ask twice (a hit),
    promote a new version (its served name is another key; the old version's entries are dropped), ask."""
    config = tmp_path / "citeline.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n')
    namespace = f"c_{uuid.uuid4().hex[:10]}"
    settings = Settings.load(config, database_url=pg_url, database={"namespace": namespace},
                             generation={"backend": "embedded", "max_tokens": 8}, answer={"min_score": -1.0},
                             adapters={"base_model_path": str(smollm2_dir), "cache_s": 0.0, "drain_s": 0.0})
    try:
        with Citeline(settings, embedder=embedder) as cl:
            SyncRunner(cl.db, embedder, chunker).run("wiki", "list", ListConnector([warranty(0, 2, Access.everyone())]))
            cl.admin.add_principal(Principal("ann", ("staff",), team="support"), actor="test")
            v1 = cl.adapters.register(make_adapter(smollm2_dir, tmp_path / "v1", seed=1), team="support", actor="test")
            cl.adapters.promote(v1.served_name, actor="test", force=True, drain_s=0)
            first = cl.ask(QUESTION, user="ann")
            assert first.model == v1.served_name and not first.cached
            assert cl.ask(QUESTION, user="ann").cached
            cache = cl.answer_cache
            assert cache is not None and len(cache) == 1
            v2 = cl.adapters.register(make_adapter(smollm2_dir, tmp_path / "v2", seed=2), team="support", actor="test")
            cl.adapters.promote(v2.served_name, actor="test", force=True, drain_s=0)
            assert len(cache) == 0  # v1's entry dropped on promotion, in this process
            after = cl.ask(QUESTION, user="ann")
            assert after.model == v2.served_name and not after.cached
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


def test_chat_completions_say_cached_like_ask(pg_url, embedder, tmp_path) -> None:
    """/v1/chat/completions (whole and streamed) and /v1/ask report the same ``cached`` flag as the audit row."""
    import json

    from fastapi.testclient import TestClient

    from citeline.serving.app import create_app

    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "gripper.md").write_text("# Vacuum gripper\n\nThe vacuum gripper has a warranty of two years.\n")
    config = tmp_path / "citeline.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n\n[[sources]]\nname = "wiki"\nconnector = "folder"\n'
                      f'config = {{ path = "{wiki}" }}\naccess = {{ public = true }}\n')
    namespace = f"cc_{uuid.uuid4().hex[:10]}"
    settings = Settings.load(config, database_url=pg_url, database={"namespace": namespace},
                             generation={"backend": "extractive"}, answer={"min_score": -1.0})
    try:
        with Citeline(settings, embedder=embedder) as cl:
            cl.sync()
            cl.admin.add_principal(Principal("alice", ("staff",)), actor="test")
            key = cl.admin.create_key("alice", actor="test").secret
            auth = {"Authorization": f"Bearer {key}"}
            body = {"model": "citeline", "messages": [{"role": "user", "content": "How long is the gripper warranty?"}]}
            with TestClient(create_app(cl)) as client:
                first = client.post("/v1/chat/completions", json=body, headers=auth).json()
                second = client.post("/v1/chat/completions", json=body, headers=auth).json()
                with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=auth) as r:
                    events = [json.loads(line[6:]) for line in r.iter_lines()
                              if line.startswith("data: {")]
                asked = client.post("/v1/ask", json={"question": "How long is the gripper warranty?"},
                                    headers=auth).json()
            assert first["cached"] is False and second["cached"] is True
            assert second["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
            assert events[-1]["cached"] is True  # the stream's last chunk carries citeline's fields
            assert asked["cached"] is True
            rows = {r.id: r.payload for r in cl.audit.records(kind="ask")}
            assert [rows[x["audit_id"]]["cached"] for x in (first, second)] == [False, True]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))
