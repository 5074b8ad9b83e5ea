"""SCIM 2.0 provisioning on a real ``citeline serve``: checked by ``scim2-tester`` and driven by ``scim2-client``.

Users pushed over ``/scim/v2`` become principals and groups their groups; a user deactivated (Okta's PATCH
``{"active": false}``, Entra's ``"False"``) or deleted loses access and its API keys at once, in the same
transaction as the audit row; removing a member (Okta's filtered path, Entra's value list) removes the group.
A bad or missing token, a malformed body, an unknown member, a huge group: a SCIM error, nothing changed.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Iterator

import httpx
import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_models import Group, GroupMember, User
from scim2_tester import Status, check_server

from citeline.errors import PrincipalError
from citeline.facade import Citeline
from tests.conftest import REPO
from tests.e2e.conftest import Server, run_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = secrets.token_urlsafe(32)
MAX_MEMBERS = 5
ARTIFACTS = REPO / "tests" / "artifacts" / "scim"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, pg_url, embedder) -> Iterator[Server]:
    sources = [{"name": "idp", "kind": "scim", "config": {"max_group_members": MAX_MEMBERS, "max_results": 50}}]
    env = {"CITELINE_PRINCIPAL_SOURCES": json.dumps(sources), "CITELINE_SCIM_TOKEN": TOKEN}
    with run_server(tmp_path_factory.mktemp("scim"), pg_url, embedder, extra_env=env) as server:
        yield server


@pytest.fixture
def cl(srv: Server) -> Iterator[Citeline]:
    with Citeline(srv.settings()) as c:
        yield c


def _scim(srv: Server, token: str = TOKEN) -> SyncSCIMClient:
    client = SyncSCIMClient(httpx2.Client(base_url=f"{srv.url}/scim/v2",
                                          headers={"Authorization": f"Bearer {token}"}))
    client.discover()
    return client


def _raw(srv: Server, method: str, path: str, body: object = None, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Content-Type": "application/scim+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, (bytes, str)) else None if body is None else json.dumps(body)
    return httpx.request(method, f"{srv.url}/scim/v2{path}", content=content, headers=headers, timeout=30)


def _principals(cl: Citeline) -> dict[str, tuple[str, ...]]:
    return {p.user: p.groups for p in cl.principals.list()}


def test_scim2_tester_finds_the_server_compliant(srv: Server) -> None:
    results = check_server(_scim(srv))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "scim2-tester.txt").write_text("\n".join(
        f"{r.status.name:10} {r.resource_type or '-':6} {r.title}: {r.reason or ''}" for r in results))
    bad = [f"{r.resource_type} {r.title}: {r.reason}" for r in results
           if r.status in (Status.ERROR, Status.CRITICAL)]
    counts = Counter(r.status.name for r in results)
    assert not bad, f"scim2-tester: {dict(counts)}\n" + "\n".join(bad)
    assert counts["SUCCESS"] >= 20, counts


def _search(srv: Server, key: str, query: str = "how do we deploy a release") -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/search", json={"query": query, "k": 20},
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _sees_runbooks(srv: Server, key: str) -> bool:
    r = _search(srv, key)
    assert r.status_code == 200, r.text
    return any("engineering/" in h["external_id"] for h in r.json()["hits"])


PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def test_users_and_groups_become_principals_and_deactivation_kills_keys(srv: Server, cl: Citeline) -> None:
    client = _scim(srv)
    dana = client.create(User(user_name="dana@acme.example", active=True, external_id="okta-1"))
    erik = client.create(User(user_name="erik@acme.example", active=True))
    eng = client.create(Group(display_name="engineering", members=[GroupMember(value=dana.id),
                                                                   GroupMember(value=erik.id)]))
    client.create(Group(display_name="Support Team", members=[GroupMember(value=dana.id)]))
    assert _principals(cl)["dana@acme.example"] == ("Support-Team", "engineering")
    found = client.query(User, query_parameters={"filter": 'userName eq "DANA@acme.example"'})
    assert [u.id for u in found.resources] == [dana.id]
    key = cl.admin.create_key("dana@acme.example", actor="test").secret
    assert _sees_runbooks(srv, key)  # the pushed group grants the engineering pages
    # Okta removes a member with a filtered path; the principal loses the group
    r = _raw(srv, "PATCH", f"/Groups/{eng.id}", {"schemas": [PATCH], "Operations": [
        {"op": "remove", "path": f'members[value eq "{erik.id}"]'}]})
    assert r.status_code == 200, r.text
    assert _principals(cl)["erik@acme.example"] == ()
    # Entra removes one with a value list: dana keeps her key but no longer sees the runbooks
    r = _raw(srv, "PATCH", f"/Groups/{eng.id}", {"schemas": [PATCH], "Operations": [
        {"op": "Remove", "path": "members", "value": [{"value": dana.id}]}]})
    assert r.status_code == 200, r.text
    assert not _sees_runbooks(srv, key)
    # Okta deactivates: the principal is gone and its key with it, in the audit row's transaction
    r = _raw(srv, "PATCH", f"/Users/{dana.id}", {"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"active": False}}]})
    assert r.status_code == 200 and r.json()["active"] is False
    assert "dana@acme.example" not in _principals(cl)
    assert _search(srv, key).status_code == 401
    row = [r for r in cl.audit.records() if r.action == "scim.user.patch"][-1]
    assert row.payload["removed"] == ["dana@acme.example"] and len(row.payload["revoked_keys"]) == 1
    # Entra re-activates with a string boolean: a new principal, the old key stays dead
    r = _raw(srv, "PATCH", f"/Users/{dana.id}", {"schemas": [PATCH], "Operations": [
        {"op": "Replace", "path": "active", "value": "True"}]})
    assert r.status_code == 200 and _principals(cl)["dana@acme.example"] == ("Support-Team",)
    assert _search(srv, key).status_code == 401
    # DELETE: gone as well
    client.delete(User, erik.id)
    with pytest.raises(PrincipalError):
        cl.principals.get("erik@acme.example")
    assert cl.audit.verify().ok


def test_pagination(srv: Server) -> None:
    client = _scim(srv)
    made = [client.create(User(user_name=f"page{n}@acme.example")) for n in range(4)]
    total = _raw(srv, "GET", "/Users?count=0").json()["totalResults"]
    seen = []
    for start in range(1, total + 1, 2):
        page = _raw(srv, "GET", f"/Users?startIndex={start}&count=2").json()
        assert page["totalResults"] == total and page["startIndex"] == start and len(page["Resources"]) <= 2
        seen += [u["id"] for u in page["Resources"]]
    assert len(seen) == total == len(set(seen)) and {u.id for u in made} <= set(seen)
    assert _raw(srv, "GET", "/Users?count=100000").json()["itemsPerPage"] <= 50  # capped at max_results


def _unchanged(srv: Server, cl: Citeline, method: str, path: str, body: object, status: int,
               token: str | None = TOKEN) -> dict:
    before = (_principals(cl), sum(1 for _ in cl.audit.records()), _raw(srv, "GET", "/Groups").json()["totalResults"])
    r = _raw(srv, method, path, body, token)
    assert r.status_code == status, (method, path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/scim+json")
    after = (_principals(cl), sum(1 for _ in cl.audit.records()), _raw(srv, "GET", "/Groups").json()["totalResults"])
    assert after == before, "a refused SCIM request changed something"
    return r.json()


def test_hostile_requests_change_nothing(srv: Server, cl: Citeline) -> None:
    client = _scim(srv)
    u = client.create(User(user_name="frank@acme.example"))
    g = client.create(Group(display_name="ops-scim", members=[GroupMember(value=u.id)]))
    assert _unchanged(srv, cl, "GET", "/Users", None, 401, token=None)["status"] == "401"
    _unchanged(srv, cl, "POST", "/Users", {"userName": "mallory"}, 401, token=TOKEN[:-1] + "x")
    _unchanged(srv, cl, "GET", "/Users", None, 401, token=srv.keys["admin"])  # an API key is not the SCIM token
    _unchanged(srv, cl, "POST", "/Users", "{not json", 400)
    _unchanged(srv, cl, "POST", "/Users", [1, 2], 400)
    _unchanged(srv, cl, "POST", "/Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}, 400)
    _unchanged(srv, cl, "POST", "/Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                           "userName": "bad\u0000name"}, 400)
    assert _unchanged(srv, cl, "POST", "/Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                                  "userName": "FRANK@acme.example"}, 409)["scimType"] == "uniqueness"
    huge = [{"value": u.id}] + [{"value": f"00000000-0000-0000-0000-{n:012d}"} for n in range(MAX_MEMBERS)]
    _unchanged(srv, cl, "POST", "/Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                            "displayName": "huge", "members": huge}, 413)
    _unchanged(srv, cl, "PUT", f"/Groups/{g.id}", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
               "displayName": "ops-scim", "members": [{"value": "00000000-0000-0000-0000-000000000001"}]}, 400)
    _unchanged(srv, cl, "PATCH", f"/Users/{u.id}", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
               "Operations": [{"op": "explode", "path": "active"}]}, 400)
    _unchanged(srv, cl, "PATCH", f"/Users/{u.id}", {"Operations": [{"op": "replace", "value": {"active": False}}]},
               400)  # no PatchOp schema
    _unchanged(srv, cl, "GET", '/Users?filter=userName co "a"', None, 400)
    _unchanged(srv, cl, "GET", "/Users/not-a-uuid", None, 404)
    _unchanged(srv, cl, "DELETE", "/Groups/00000000-0000-0000-0000-000000000000", None, 404)
    _unchanged(srv, cl, "POST", "/Users", b"{" + b" " * (2 << 20) + b"}", 413)
    assert _principals(cl)["frank@acme.example"] == ("ops-scim",)
