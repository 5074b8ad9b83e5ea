"""The API's shape without a database: its routes, error bodies, headers and metrics, over a fake facade.

The real server runs in ``tests/e2e/test_server.py``; this pins what the routers in ``citeline.serving.api``
and ``create_app`` put together, so a route or an error mapping cannot drift unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace as NS

import psycopg
import pytest
from fastapi.testclient import TestClient

from citeline import errors
from citeline.domain import Principal
from citeline.facade import Authenticated
from citeline.serving.app import create_app
from citeline.settings import Settings

pytestmark = pytest.mark.unit

ROUTES = {("GET", "/"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/models"),
          ("POST", "/v1/ask"), ("POST", "/v1/search"), ("POST", "/v1/feedback"), ("POST", "/v1/chat/completions"), ("POST", "/v1/admin/keys"),
          ("DELETE", "/v1/admin/keys/{key_id}"), ("PUT", "/v1/admin/principals"),
          ("DELETE", "/v1/admin/principals/{user}"), ("GET", "/v1/admin/audit/verify"),
          ("GET", "/v1/admin/audit/export"), ("GET", "/v1/admin/keys"), ("GET", "/v1/admin/principals"),
          ("GET", "/v1/admin/principals/{user}"), ("GET", "/v1/admin/sources"),
          ("POST", "/v1/admin/sources/{name}/sync"), ("GET", "/v1/admin/sources/runs/{run_id}"),
          ("GET", "/v1/admin/adapters"), ("POST", "/v1/admin/adapters"),
          ("POST", "/v1/admin/adapters/{served_name}/promote"), ("POST", "/v1/admin/adapters/{served_name}/retire"),
          ("GET", "/v1/admin/audit"), ("GET", "/v1/admin/audit/{row_id}/replay"), ("POST", "/v1/admin/view-as"),
          ("GET", "/v1/admin/feedback")}
USER, ADMIN = {"Authorization": "Bearer cl_user"}, {"Authorization": "Bearer cl_admin"}
FAILURES = {"missing": errors.ModelNotFoundError("no such model"), "backend": errors.GenerationError("down"),
            "forbidden": errors.ForbiddenError("not yours"), "busy": errors.OverloadedError("busy"),
            "db": errors.DatabaseError("gone"), "audit": errors.AuditError("audit down"),
            "other": errors.CitelineError("bad"), "lock": psycopg.errors.LockNotAvailable("lock")}


def _authenticate(token: str | None) -> Authenticated:
    if token in ("cl_user", "cl_admin"):
        return Authenticated("k1", Principal("bob", ("sales",)), token == "cl_admin")
    raise errors.AuthError("invalid API key")


def _ask(question: str, principal: Principal, model: str | None = None, **options: object) -> object:
    raise FAILURES[model or "other"]


def _fake() -> NS:
    pool = NS(max_size=4, get_stats=lambda: {})
    return NS(settings=Settings(), db=NS(limit_requests=lambda **_: None, pool=pool, url="postgresql://127.0.0.1:1/x"),
              assistant=NS(slots=NS(limit=2, busy=0), ask=_ask), keys=NS(authenticate=_authenticate),
              backend=NS(name="fake", base_model="base", models=lambda: ["base"]), router=NS(may_use=lambda p, m: True),
              admin=NS(revoke_key=lambda key_id, actor: False))


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(_fake()), raise_server_exceptions=False) as c:  # type: ignore[arg-type]
        yield c


def test_the_routes_are_the_documented_ones(client):
    paths = client.get("/openapi.json").json()["paths"]
    routes = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert routes | {("GET", "/"), ("GET", "/metrics")} == ROUTES  # the page and /metrics are not in the schema
    assert client.get("/").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(("model", "status", "code", "retry"), [
    ("missing", 404, "model_not_found", False), ("backend", 502, "backend_error", False),
    ("forbidden", 403, "forbidden", False), ("busy", 503, "overloaded", True), ("db", 503, "database_unavailable", True),
    ("audit", 503, "audit_unavailable", True), ("other", 400, None, False), ("lock", 503, "database_unavailable", True)])
def test_errors_are_answered_in_openais_shape(client, model, status, code, retry):
    r = client.post("/v1/ask", json={"question": "q", "model": model}, headers=USER)
    assert r.status_code == status
    body = r.json()["error"]
    assert body["code"] == code and body["param"] is None and body["message"]
    assert body["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert ("retry-after" in r.headers) is retry
    assert r.headers["x-frame-options"] == "DENY" and r.headers["server-timing"].startswith("app;dur=")


def test_keys_bodies_and_admin_are_checked(client):
    assert client.get("/v1/models").json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers=USER).json()["data"][0]["id"] == "citeline"
    assert client.get("/v1/admin/audit/verify", headers=USER).status_code == 403
    assert client.delete("/v1/admin/keys/k9", headers=ADMIN).status_code == 404
    r = client.post("/v1/ask", json={"question": "a\u0000b"}, headers=USER)
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (400, "invalid_text", "question")
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "assistant", "content": "hi"}]}, headers=USER)
    assert r.status_code == 422
    metrics = client.get("/metrics").text
    assert 'citeline_requests_total{endpoint="/v1/admin/keys/{key_id}",status="404"} 1.0' in metrics
    assert 'citeline_rejected_requests_total{reason="bad_text"} 1.0' in metrics


def test_serving_reaches_the_core_only_through_the_facade():
    allowed = ("citeline.facade", "citeline.serving", "citeline.domain", "citeline.errors", "citeline.contracts",
               "citeline.settings", "citeline.tracing")
    root = Path(__file__).resolve().parents[2] / "serving"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("citeline"):
                    assert name.startswith(allowed), f"{path.relative_to(root.parent)} imports {name}"
