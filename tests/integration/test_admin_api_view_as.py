"""View as a user and replay an audited answer (issue 18, item 5), and the audit search, over the admin API.

View-as runs the same retrieval under the same row-level policies as the user's own request, so it returns
exactly what the user gets, and it writes an impersonation row naming the admin and the user. Replay reads the
chunks an audit row records as shown, as they are today: still indexed (so unchanged: a chunk's text never
changes under its id), and whether the asker may still see each one, decided by PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from citeline.cli import app as cli_app
from citeline.domain import Principal
from tests.support.admin_world import World, admin_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(pg_url: str, embedder, tmp_path_factory) -> Iterator[World]:
    yield from admin_world(pg_url, embedder, tmp_path_factory)


def _ids(hits: list[dict]) -> set[str]:
    return {h["external_id"] for h in hits}


@pytest.mark.parametrize(("user", "sees", "hidden"), [("alice", "eng.md", "hr.md"), ("bob", "hr.md", "eng.md")])
def test_view_as_search_returns_exactly_what_the_user_sees_and_names_both(world: World, user: str, sees: str,
                                                                          hidden: str) -> None:
    query = "salary bands rollback payments service office closed"
    r = world.client.post("/v1/admin/view-as", json={"user": user, "query": query, "k": 10}, headers=world.h())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["user"] == user and out["what"] == "search"
    assert sees in _ids(out["hits"]) and hidden not in _ids(out["hits"]) and "open.md" in _ids(out["hits"])
    own = world.cl.search(query, user=user, k=10)
    assert [h["chunk_id"] for h in out["hits"]] == [h.chunk_id for h in own.hits]  # exactly the user's result
    assert all(set(h) == {"chunk_id", "document_id", "source", "external_id", "title", "url", "text", "span_start",
                          "span_end", "score"} for h in out["hits"])  # as /v1/search shows a hit: no ranking details
    row = world.rows("impersonate")[-1]
    assert row.id == out["impersonation_audit_id"] and row.kind == "admin"
    assert row.principal.startswith("root (key ") and row.payload["as_user"] == user
    assert row.payload["admin"] == row.principal and row.payload["as_groups"] == list(
        world.cl.principals.get(user).groups)
    assert [s["chunk_id"] for s in row.payload["shown"]] == [h["chunk_id"] for h in out["hits"]]


def test_view_as_ask_answers_as_the_user_and_links_the_answer_row(world: World) -> None:
    r = world.client.post("/v1/admin/view-as", json={"user": "bob", "what": "ask",
                                                     "query": "When are salary bands reviewed?"}, headers=world.h())
    assert r.status_code == 200, r.text
    answer = r.json()["answer"]
    assert {s["external_id"] for s in answer["sources"]} <= {"hr.md", "open.md"}
    assert not answer["refused"] and "March" in answer["answer"]
    imp = world.rows("impersonate")[-1]
    asked = [x for x in world.cl.audit.records(kind="ask") if x.id == answer["audit_id"]][0]
    assert imp.payload["answer_audit_id"] == asked.id and asked.principal == "bob"
    assert imp.payload["request_id"] == asked.payload["request_id"]  # one request, two rows
    assert world.client.post("/v1/admin/view-as", json={"user": "nobody", "query": "x"},
                             headers=world.h()).status_code == 404


def test_replay_shows_the_chunks_as_shown_and_whether_the_asker_still_may(world: World) -> None:
    c, h = world.client, world.h()
    world.cl.admin.add_principal(Principal("dave", ("eng",)), actor="test")
    key = world.cl.admin.create_key("dave", actor="test").secret
    asked = c.post("/v1/ask", json={"question": "How do I roll back the payments service?"}, headers=world.h(key))
    assert asked.status_code == 200, asked.text
    row_id = asked.json()["audit_id"]
    first = c.get(f"/v1/admin/audit/{row_id}/replay", headers=h).json()
    assert first["asker"] == "dave" and first["asker_exists"] and first["row"]["id"] == row_id
    eng = [ch for ch in first["chunks"] if ch["external_id"] == "eng.md"]
    assert eng and all(ch["exists"] and ch["unchanged"] and ch["visible_now"] for ch in first["chunks"])
    assert "deployctl rollback payments" in eng[0]["text"]
    assert world.rows("audit.replay")[-1].payload["row"] == row_id

    world.cl.admin.add_principal(Principal("dave", ("sales",)), actor="test")  # dave changed teams
    moved = c.get(f"/v1/admin/audit/{row_id}/replay", headers=h).json()
    assert [ch["visible_now"] for ch in moved["chunks"] if ch["external_id"] == "eng.md"] == [False] * len(eng)
    assert world.rows("audit.replay")[-1].payload["hidden_now"] >= 1

    # the CLI: the same replay, thin
    out = CliRunner().invoke(cli_app, ["audit", "replay", str(row_id), "--config", str(world.config), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["chunks"][0]["chunk_id"] == first["chunks"][0]["chunk_id"]

    eng_file = world.folder / "eng.md"
    original = eng_file.read_text()
    eng_file.write_text(original.replace("on-call engineer", "release manager"))
    try:
        world.cl.sync("wiki")  # re-indexed: the chunks shown are replaced by new ones
        later = c.get(f"/v1/admin/audit/{row_id}/replay", headers=h).json()
        gone = [ch for ch in later["chunks"] if ch["external_id"] == "eng.md"]
        assert gone and all(not ch["exists"] and not ch["unchanged"] and ch["text"] is None for ch in gone)
    finally:
        eng_file.write_text(original)
        world.cl.sync("wiki")
    assert c.get("/v1/admin/audit/99999999/replay", headers=h).status_code == 404
    assert c.get("/v1/admin/audit/0/replay", headers=h).status_code == 404
    not_an_answer = world.rows("principal.put")[-1].id
    r = c.get(f"/v1/admin/audit/{not_an_answer}/replay", headers=h)
    assert r.status_code == 400 and "records no chunks shown" in r.json()["error"]["message"]
    assert world.cl.audit.verify().ok


def test_audit_search_filters_and_pages(world: World) -> None:
    c, h = world.client, world.h()
    for i in range(3):
        r = c.put("/v1/admin/principals", json={"user": f"temp{i}", "groups": ["g"]},
                  headers=world.h(**{"X-Request-ID": f"audit-search-{i}"}))
        assert r.status_code == 200
    got = c.get("/v1/admin/audit", params={"request_id": "audit-search-1"}, headers=h).json()
    assert [r["payload"]["user"] for r in got["rows"]] == ["temp1"] and got["next_before"] is None
    page1 = c.get("/v1/admin/audit", params={"action": "principal.put", "limit": 2}, headers=h).json()
    assert [r["payload"]["user"] for r in page1["rows"]] == ["temp2", "temp1"] and page1["next_before"]
    page2 = c.get("/v1/admin/audit", params={"action": "principal.put", "limit": 2,
                                             "before": page1["next_before"]}, headers=h).json()
    assert page2["rows"][0]["payload"]["user"] == "temp0" and page2["rows"][0]["id"] < page1["rows"][-1]["id"]
    at = page1["rows"][0]["at"]
    only = c.get("/v1/admin/audit", params={"since": at, "until": "2999-01-01", "kind": "admin"}, headers=h).json()
    assert only["rows"] and all(r["at"] >= at and r["kind"] == "admin" for r in only["rows"])
    mine = c.get("/v1/admin/audit", params={"principal": "bob", "kind": "ask"}, headers=h).json()
    assert all(r["principal"] == "bob" for r in mine["rows"])
    for hostile in ("x' OR '1'='1", "%", "'; DELETE FROM audit_log; --"):
        r = c.get("/v1/admin/audit", params={"principal": hostile, "request_id": hostile}, headers=h)
        assert r.status_code == 200 and r.json()["rows"] == []
    for bad in ({"since": "yesterday"}, {"limit": 0}, {"limit": 100000}, {"before": -5}, {"principal": "p" * 300}):
        assert c.get("/v1/admin/audit", params=bad, headers=h).status_code == 422, bad
    assert world.cl.audit.verify().ok
