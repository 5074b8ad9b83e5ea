"""``GET /v1/admin/feedback`` (issue 19, item 1: feedback in the admin API) on the real app, the real embedded
PostgreSQL, the real embedder and the real audit chain.

Feedback is given the only way it can be (by the asker, ``POST /v1/feedback``); the admin API reports it per team
and model and lists the latest rows with their questions; only an admin may read it, reading writes no audit row,
hostile text comes back verbatim as JSON, and out-of-range filters are refused with 422.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.admin_world import World, admin_world

pytestmark = pytest.mark.integration

HOSTILE = "<script>window.__pwned=1</script> & <img src=x onerror=alert(1)> \"quoted\" 'single' \u202e"
ROLLBACK = "How do I roll back the payments service?"
HOLIDAY = "Is the office closed on the first of January?"
SALARY = "When are salary bands reviewed?"
V2 = "support-v2-0123abcd"  # an adapter version's served name (the extractive backend serves only its base model)


@pytest.fixture(scope="module")
def world(pg_url: str, embedder, tmp_path_factory) -> Iterator[World]:
    yield from admin_world(pg_url, embedder, tmp_path_factory)


def _ask_and_rate(w: World, key: str, question: str, **feedback: Any) -> dict[str, Any]:
    answer = w.client.post("/v1/ask", json={"question": question}, headers=w.h(key))
    assert answer.status_code == 200, answer.text
    r = w.client.post("/v1/feedback", json={"audit_id": answer.json()["audit_id"], **feedback}, headers=w.h(key))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def rated(world: World) -> dict[str, dict[str, Any]]:
    """alice (team support) rates three answers, bob (no team) one; alice's third as if adapter v2 answered it."""
    bob = world.cl.admin.create_key("bob", actor="test").secret
    out = {"down": _ask_and_rate(world, world.alice, ROLLBACK, rating="down", reason="wrong command",
                                 correction=HOSTILE),
           "up": _ask_and_rate(world, world.alice, HOLIDAY, rating="up"),
           "v2": _ask_and_rate(world, world.alice, ROLLBACK + " (again)", rating="up", reason="better"),
           "bob": _ask_and_rate(world, bob, SALARY, rating="down", reason="<b>bold</b>")}
    # the stored row names the model that answered (copied from the audit row); one row is relabelled as an
    # adapter version's, since the extractive backend serves one model
    world.owner_sql(f"UPDATE feedback SET model = '{V2}' WHERE audit_id = {int(out['v2']['audit_id'])}")
    return out


def _get(w: World, query: str = "", key: str | None = None) -> Any:
    return w.client.get("/v1/admin/feedback" + query, headers=w.h(key) if key != "" else {})


def test_only_an_admin_reads_feedback_and_reading_writes_no_audit_row(world: World, rated) -> None:
    before = sum(1 for _ in world.cl.audit.records())
    assert _get(world, key=world.alice).status_code == 403  # the asker herself: not an admin
    assert "admin" in _get(world, key=world.alice).json()["error"]["message"]
    assert _get(world, key="").status_code == 401
    assert _get(world, key="cl_aaaaaaaaaaaa_" + "x" * 43).status_code == 401
    assert _get(world).status_code == 200
    assert sum(1 for _ in world.cl.audit.records()) == before


def test_the_summary_is_per_team_and_model_and_the_rows_are_newest_first(world: World, rated) -> None:
    r = _get(world)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    base = rated["up"]["model"]
    summary = {(s["team"], s["model"]): s for s in body["summary"]}
    assert set(summary) == {(None, base), ("support", base), ("support", V2)}
    s = summary[("support", base)]
    assert (s["up"], s["down"], s["corrected"], s["total"], s["up_share"]) == (1, 1, 1, 2, 0.5)
    assert (summary[("support", V2)]["up_share"], summary[(None, base)]["up_share"]) == (1.0, 0.0)
    assert all(s["last_at"] for s in body["summary"])
    rows = body["rows"]
    assert [row["audit_id"] for row in rows] == [rated[k]["audit_id"] for k in ("bob", "v2", "up", "down")]
    down = rows[-1]
    assert (down["principal"], down["team"], down["model"], down["rating"], down["reason"], down["question"]) == (
        "alice", "support", base, "down", "wrong command", ROLLBACK)
    assert rows[0]["team"] is None and rows[0]["question"] == SALARY and rows[0]["reason"] == "<b>bold</b>"
    assert set(down) == {"id", "audit_id", "principal", "team", "model", "rating", "reason", "correction",
                         "question", "created_at", "updated_at"}
    # the audit row the admin can replay is the answer's: the question there is the one listed here
    (answer_row,) = [a for a in world.cl.audit.records(kind="ask") if a.id == down["audit_id"]]
    assert answer_row.principal == "alice" and answer_row.payload["question"] == ROLLBACK


def test_filters_narrow_the_rows_and_the_summary(world: World, rated) -> None:
    def ids(query: str) -> list[int]:
        return [row["audit_id"] for row in _get(world, query).json()["rows"]]

    assert ids("?team=support") == [rated[k]["audit_id"] for k in ("v2", "up", "down")]
    assert {s["team"] for s in _get(world, "?team=support").json()["summary"]} == {"support"}
    assert ids("?rating=down") == [rated["bob"]["audit_id"], rated["down"]["audit_id"]]
    assert ids("?rating=up&team=support") == [rated["v2"]["audit_id"], rated["up"]["audit_id"]]
    only_v2 = _get(world, f"?model={V2}").json()
    assert [row["audit_id"] for row in only_v2["rows"]] == [rated["v2"]["audit_id"]]
    assert [(s["model"], s["up"], s["down"]) for s in only_v2["summary"]] == [(V2, 1, 0)]
    assert ids("?limit=1") == [rated["bob"]["audit_id"]]
    assert _get(world, "?team=nobody").json() == {"summary": [], "rows": []}
    # a filter value is data, never SQL
    assert _get(world, "?team=support'%20OR%20'1'='1").json() == {"summary": [], "rows": []}


def test_hostile_text_comes_back_verbatim_as_json(world: World, rated) -> None:
    r = _get(world, "?rating=down&team=support")
    assert r.headers["content-type"].startswith("application/json")
    (row,) = r.json()["rows"]
    assert row["correction"] == HOSTILE  # stored and returned as given: the page shows it as text
    assert r.headers["x-content-type-options"] == "nosniff"  # never sniffed into HTML by a browser


@pytest.mark.parametrize("query", ["?limit=0", "?limit=501", "?limit=-1", "?limit=ten", "?rating=sideways",
                                   "?rating=1", "?team=", "?model=" + "m" * 201])
def test_out_of_range_filters_are_refused_with_422(world: World, query: str) -> None:
    r = _get(world, query)
    assert r.status_code == 422, (query, r.status_code, r.text)
    assert r.json()["error"]["message"]


def test_the_core_listing_checks_its_bounds_and_the_openapi_document_names_the_models(world: World) -> None:
    for bad in ({"limit": 0}, {"limit": 501}, {"rating": 2}):
        with pytest.raises(ValueError, match="limit|rating"):
            world.cl.feedback.recent(**bad)
    schemas = world.client.get("/openapi.json").json()["components"]["schemas"]
    assert {"FeedbackPageOut", "FeedbackEntryOut", "FeedbackSummaryOut"} <= set(schemas)
    assert {"total", "up_share", "up", "down", "corrected"} <= set(schemas["FeedbackSummaryOut"]["properties"])
    assert schemas["FeedbackEntryOut"]["properties"]["rating"]["enum"] == ["up", "down"]
