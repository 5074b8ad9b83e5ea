"""The admin page's route and files without a server: what ``/admin`` serves, and what it refuses to serve.

The page itself runs in headless Chromium against a real server in ``tests/e2e/test_admin_page.py``.
"""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from citeline.serving.api import page

pytestmark = pytest.mark.unit


def _client(*, oidc: bool) -> TestClient:
    app = FastAPI()
    app.include_router(page.router)
    if oidc:  # what O's router mounts when [auth.oidc] is set
        app.add_api_route("/auth/login", lambda: None, methods=["GET"])
    app.state.citeline = NS(settings=NS(auth=NS(oidc=NS(issuer="https://idp.example") if oidc else None)))
    return TestClient(app)


def test_the_admin_page_and_its_two_files_are_served():
    client = _client(oidc=False)
    html = client.get("/admin")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert '<script src="/admin/admin.js" defer></script>' in html.text and 'data-oidc="off"' in html.text
    assert client.get("/admin/admin.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/admin/admin.css").headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("path", ["/admin/index.html", "/admin/admin.html", "/admin/..%2Findex.html",
                                  "/admin/%2e%2e%2fapi%2fpage.py", "/admin/admin.js%00", "/admin/ADMIN.JS"])
def test_nothing_else_is_reachable_through_the_asset_route(path):
    assert _client(oidc=False).get(path).status_code == 404


def test_the_identity_provider_button_only_when_its_login_route_is_mounted():
    assert 'data-oidc="on"' in _client(oidc=True).get("/admin").text
    assert 'data-oidc="off"' in _client(oidc=False).get("/admin").text


def test_server_text_is_never_parsed_as_markup():
    """admin.js builds every element itself and sets server text as text; the page allows no inline script."""
    script = (page.STATIC / "admin.js").read_text(encoding="utf-8")
    for needle in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                   "http://", "https://"):
        assert needle not in script, needle
    html = (page.STATIC / "admin.html").read_text(encoding="utf-8")
    assert "script-src 'self'" in html and "'unsafe-inline'" not in html and "<script>" not in html
