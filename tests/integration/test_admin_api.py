"""The admin API (issue 18, item 1): the CLI's coverage over HTTP, on the real app and the real database.

Every ``/v1/admin`` route is admin-only (a table over the OpenAPI document, so a new route cannot be left
open); every mutation leaves its audit row in the same transaction (with audit inserts failing for real,
nothing changes); replies are typed models in the OpenAPI document; hostile input gets a clean 4xx.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from tests.support.admin_world import World, admin_world, audit_inserts_fail

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def world(pg_url: str, embedder, tmp_path_factory) -> Iterator[World]:
    yield from admin_world(pg_url, embedder, tmp_path_factory)


# -- every route is admin-only, and typed -----------------------------------------------------------------------
EXPECTED = {
    ("GET", "/v1/admin/sources"), ("POST", "/v1/admin/sources/{name}/sync"), ("GET", "/v1/admin/sources/runs/{run_id}"),
    ("GET", "/v1/admin/principals"), ("GET", "/v1/admin/principals/{user}"), ("PUT", "/v1/admin/principals"),
    ("DELETE", "/v1/admin/principals/{user}"), ("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"),
    ("DELETE", "/v1/admin/keys/{key_id}"), ("GET", "/v1/admin/adapters"), ("POST", "/v1/admin/adapters"),
    ("POST", "/v1/admin/adapters/{served_name}/promote"), ("POST", "/v1/admin/adapters/{served_name}/retire"),
    ("GET", "/v1/admin/audit/verify"), ("GET", "/v1/admin/audit/export"), ("GET", "/v1/admin/audit"),
    ("GET", "/v1/admin/audit/{row_id}/replay"), ("POST", "/v1/admin/view-as"), ("GET", "/v1/admin/feedback"),
}


def _admin_routes(client: TestClient) -> list[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    return sorted((m.upper(), p) for p, ops in paths.items() if p.startswith("/v1/admin") for m in ops)


def test_every_admin_route_refuses_a_non_admin_key_and_no_key(world: World) -> None:
    routes = _admin_routes(world.client)
    assert set(routes) >= EXPECTED, EXPECTED - set(routes)
    before = sum(1 for _ in world.cl.audit.records())
    for method, path in routes:
        url = path.replace("{row_id}", "1").replace("{run_id}", "1").replace("{name}", "wiki") \
            .replace("{user}", "alice").replace("{key_id}", "abc").replace("{served_name}", "x")
        body = {"user": "alice", "query": "salary", "path": "x", "team": "t"} if method in ("POST", "PUT") else None
        r = world.client.request(method, url, json=body, headers=world.h(world.alice))
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "admin" in r.json()["error"]["message"]
        r = world.client.request(method, url, json=body)
        assert r.status_code == 401, (method, path, r.status_code)
    assert sum(1 for _ in world.cl.audit.records()) == before  # a refused caller changed nothing


def test_the_openapi_document_names_the_typed_models(world: World) -> None:
    doc = world.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in ("KeyOut", "KeyCreatedOut", "PrincipalOut", "PrincipalRemovedOut", "SourceOut", "SyncStartedOut",
                 "RunOut", "AdapterOut", "AdapterRegisterBody", "PromotionOut", "VerifyOut", "AuditPageOut",
                 "AuditRowOut", "ViewAsBody", "ViewAsOut", "ReplayOut", "ChunkReplayOut", "KeyBody", "PrincipalBody"):
        assert name in schemas, name
    for method, path in _admin_routes(world.client):
        if path == "/v1/admin/audit/export":
            continue
        op = doc["paths"][path][method.lower()]
        ok = op["responses"].get("200") or op["responses"].get("202")
        schema = ok["content"]["application/json"]["schema"]
        assert "$ref" in schema or "$ref" in schema.get("items", {}), (method, path, schema)
    assert set(schemas["SourceOut"]["properties"]) >= {"documents", "last_run_status", "next_run", "error"}


# -- principals and keys: every change with its audit row, or neither ------------------------------------------
def test_principals_and_keys_round_trip_each_change_audited(world: World) -> None:
    c, h = world.client, world.h()
    r = c.put("/v1/admin/principals", json={"user": "carol", "groups": ["eng", "ops"], "team": "sre"}, headers=h)
    assert r.status_code == 200 and r.json() == {"user": "carol", "groups": ["eng", "ops"], "team": "sre"}
    assert c.get("/v1/admin/principals/carol", headers=h).json()["groups"] == ["eng", "ops"]
    assert "carol" in {p["user"] for p in c.get("/v1/admin/principals", headers=h).json()}
    put = world.rows("principal.put")[-1]
    assert put.payload["user"] == "carol" and put.principal.startswith("root (key ")
    new = c.post("/v1/admin/keys", json={"user": "carol", "label": "laptop"}, headers=h).json()
    assert new["key"].startswith(f"cl_{new['key_id']}_") and world.rows("key.create")[-1].payload["key_id"] == new["key_id"]
    listed = {k["key_id"]: k for k in c.get("/v1/admin/keys", params={"user": "carol"}, headers=h).json()}
    assert listed[new["key_id"]]["label"] == "laptop" and listed[new["key_id"]]["revoked_at"] is None
    assert all("key" not in k and "secret" not in str(k) for k in listed.values())
    assert c.get("/v1/models", headers=world.h(new["key"])).status_code == 200
    assert c.delete(f"/v1/admin/keys/{new['key_id']}", headers=h).json() == {"key_id": new["key_id"], "revoked": True}
    assert world.rows("key.revoke")[-1].payload == {**world.rows("key.revoke")[-1].payload, "revoked": True}
    assert c.get("/v1/models", headers=world.h(new["key"])).status_code == 401
    second = c.post("/v1/admin/keys", json={"user": "carol"}, headers=h).json()
    gone = c.delete("/v1/admin/principals/carol", headers=h)
    assert gone.json() == {"user": "carol", "removed": True, "revoked_keys": [second["key_id"]]}
    assert world.rows("principal.remove")[-1].payload["revoked_keys"] == [second["key_id"]]
    for method, url, body in (("GET", "/v1/admin/principals/carol", None), ("DELETE", "/v1/admin/principals/carol", None),
                              ("POST", "/v1/admin/keys", {"user": "carol"}), ("DELETE", "/v1/admin/keys/nosuchkey", None)):
        r = c.request(method, url, json=body, headers=h)
        assert r.status_code == 404, (method, url, r.text)
    assert world.cl.audit.verify().ok


def test_a_change_whose_audit_row_cannot_be_written_is_not_made(world: World) -> None:
    c, h = world.client, world.h()
    keys_before = len(world.cl.keys.list())
    with audit_inserts_fail(world):
        assert c.put("/v1/admin/principals", json={"user": "mallory", "groups": ["eng"]}, headers=h).status_code == 503
        assert c.post("/v1/admin/keys", json={"user": "bob", "admin": True}, headers=h).status_code == 503
        assert c.delete("/v1/admin/principals/bob", headers=h).status_code == 503
        assert c.post("/v1/admin/sources/wiki/sync", headers=h).status_code == 503  # no row, no sync
        assert c.post("/v1/admin/view-as", json={"user": "bob", "query": "salary"}, headers=h).status_code == 503
    assert "mallory" not in {p.user for p in world.cl.principals.list()}
    assert world.cl.principals.get("bob").groups == ("hr",)
    assert len(world.cl.keys.list()) == keys_before
    assert world.cl.audit.verify().ok


# -- sources ------------------------------------------------------------------------------------------------------
def test_sources_status_sync_now_in_the_background_and_the_run(world: World) -> None:
    c, h = world.client, world.h()
    (wiki,) = c.get("/v1/admin/sources", headers=h).json()
    assert wiki["name"] == "wiki" and wiki["documents"] == 3 and wiki["last_run_status"] == "succeeded"
    assert wiki["schedule"] == "@hourly" and wiki["next_run"] is not None and wiki["error"] is None
    assert set(wiki) == {"name", "connector", "documents", "last_run_status", "last_run_started", "last_run_finished",
                         "last_success", "counts", "error", "schedule", "next_run", "last_run_id"}
    (world.folder / "new.md").write_text("# Parking\n\nVisitors park in bay C.\n")
    try:
        r = c.post("/v1/admin/sources/wiki/sync", json={"full": False}, headers=h)
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        assert world.rows("source.sync")[-1].payload["source"] == "wiki"
        deadline = time.monotonic() + 120
        while (run := c.get(r.json()["status_url"], headers=h).json())["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert run["run_id"] == run_id and run["status"] == "succeeded" and run["added"] == 1, run
        assert set(run) == {"run_id", "source", "status", "started_at", "finished_at", "added", "updated", "unchanged",
                            "deleted", "failed", "chunks", "error", "failures"} and run["failures"] == []
        after = c.get("/v1/admin/sources", headers=h).json()[0]
        assert after["documents"] == 4 and after["last_run_id"] == run_id and after["counts"]["added"] == 1
    finally:
        (world.folder / "new.md").unlink()
    assert c.post("/v1/admin/sources/nosuch/sync", headers=h).status_code == 404
    assert c.post("/v1/admin/sources/..%2F..%2Fetc/sync", headers=h).status_code == 404
    assert c.get("/v1/admin/sources/runs/987654321", headers=h).status_code == 404
    assert c.get("/v1/admin/sources/runs/-1", headers=h).status_code == 404
    assert c.get("/v1/admin/sources/runs/abc", headers=h).status_code == 422


def test_sync_now_of_a_source_already_syncing_is_409(world: World) -> None:
    """Another process holds the source's sync lock (the runner's advisory lock): sync now is refused, no run."""
    space = int.from_bytes(hashlib.sha256(f"sync:{world.cl.namespace}".encode()).digest()[:4], "big", signed=True)
    with psycopg.connect(world.pg_url, autocommit=True) as holder:
        holder.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(world.cl.namespace)))
        row = holder.execute("SELECT id FROM sources WHERE name = 'wiki'").fetchone()
        assert row is not None
        runs_before = holder.execute("SELECT count(*) FROM sync_runs").fetchone()
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (space, row[0]))
        r = world.client.post("/v1/admin/sources/wiki/sync", headers=world.h())
        assert r.status_code == 409 and "being synced by another process" in r.json()["error"]["message"], r.text
        assert holder.execute("SELECT count(*) FROM sync_runs").fetchone() == runs_before


# -- adapters: a caller's path is never trusted ------------------------------------------------------------------
def test_adapter_routes_refuse_paths_outside_the_allowed_roots(world: World, tmp_path: Path) -> None:
    c, h = world.client, world.h()
    assert c.get("/v1/admin/adapters", headers=h).json() == []
    store = world.cl.settings.home / "adapters"
    store.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "evil"
    outside.mkdir()
    (store / "link").symlink_to(outside)
    try:
        for path in ("../../../../etc", "/etc", str(outside), "link", "a\\..\\..\\etc", "nosuch"):
            r = c.post("/v1/admin/adapters", json={"path": path, "team": "support"}, headers=h)
            assert r.status_code == 422, (path, r.text)
            assert "adapter path" in r.json()["error"]["message"]
        assert c.post("/v1/admin/adapters", json={"path": "a\x00b", "team": "t"}, headers=h).status_code == 400
    finally:
        (store / "link").unlink()
    assert c.post("/v1/admin/adapters/nosuch/promote", headers=h).status_code == 404
    assert c.post("/v1/admin/adapters/nosuch/retire", headers=h).status_code == 404
    assert c.get("/v1/admin/adapters", headers=h).json() == []
    assert not world.rows("adapter.register")


# -- hostile input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("user", ["alice'; DROP TABLE principals; --", "x" * 5000, "", " ", "a\tb"])
def test_hostile_principal_names_are_refused_cleanly(world: World, user: str) -> None:
    r = world.client.put("/v1/admin/principals", json={"user": user, "groups": ["eng"]}, headers=world.h())
    assert r.status_code in (400, 422), r.text
    r = world.client.post("/v1/admin/view-as", json={"user": user, "query": "salary"}, headers=world.h())
    assert r.status_code in (404, 422), r.text
    assert {"alice", "bob", "root"} <= {p.user for p in world.cl.principals.list()}


def test_huge_and_malformed_bodies_get_4xx(world: World) -> None:
    c, h = world.client, world.h()
    huge = {"user": "bob", "groups": ["g"] * 400_000}
    assert c.put("/v1/admin/principals", json=huge, headers=h).status_code == 413
    assert c.put("/v1/admin/principals", content=b"{not json", headers={**h, "Content-Type": "application/json"}
                 ).status_code == 422
    assert c.put("/v1/admin/principals", json={"user": "bo\x00b"}, headers=h).status_code == 400
    assert c.post("/v1/admin/keys", json={"user": ["alice"]}, headers=h).status_code == 422
    assert world.cl.principals.get("bob").groups == ("hr",)


@pytest.mark.slow
def test_an_adapter_is_registered_promoted_and_retired_over_the_api(world: World, smollm2_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.adapters import make_adapter

    c, h = world.client, world.h()
    s = world.cl.settings
    monkeypatch.setattr(world.cl.adapters, "settings", s.model_copy(update={
        "adapters": s.adapters.model_copy(update={"base_model_path": smollm2_dir})}))
    make_adapter(smollm2_dir, s.home / "adapters" / "incoming" / "v1")
    r = c.post("/v1/admin/adapters", json={"path": "incoming/v1", "team": "support"}, headers=h)
    assert r.status_code == 200, r.text
    served = r.json()["served_name"]
    assert r.json()["team"] == "support" and r.json()["status"] != "active" and r.json()["rank"] == 8
    reg = world.rows("adapter.register")[-1]
    assert reg.payload["adapter"] == served and reg.principal.startswith("root (key ")
    refused = c.post(f"/v1/admin/adapters/{served}/promote", headers=h)  # no evaluation: the gate refuses
    assert refused.status_code == 409 and "evaluation" in refused.json()["error"]["message"]
    done = c.post(f"/v1/admin/adapters/{served}/promote", json={"force": True, "drain_s": 0}, headers=h)
    assert done.status_code == 200 and done.json()["adapter"] == served, done.text
    assert [a["status"] for a in c.get("/v1/admin/adapters", params={"team": "support"}, headers=h).json()] == ["active"]
    assert world.rows("adapter.promote")[-1].payload["forced"] is True
    retired = c.post(f"/v1/admin/adapters/{served}/retire", headers=h)
    assert retired.status_code == 200 and retired.json()["status"] == "retired"
    assert world.rows("adapter.retire")[-1].payload == {**world.rows("adapter.retire")[-1].payload, "adapter": served}
    assert world.cl.audit.verify().ok
