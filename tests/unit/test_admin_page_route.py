"""The admin page's route and files without a server: what ``/admin`` serves, and what it refuses to serve.

The page itself runs in headless Chromium against a real server in ``tests/e2e/test_admin_page.py``.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from citeline.serving.api import page

pytestmark = pytest.mark.unit


def _client(*, oidc: bool) -> TestClient:
    app = FastAPI()
    app.include_router(page.router)
    app.state.sessions = object() if oidc else None  # what auth.install sets: sessions only with [auth.oidc]
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


def test_the_identity_provider_button_only_when_oidc_sign_in_is_installed():
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


def test_the_button_follows_the_real_app_settings():
    """``create_app`` over settings with and without ``[auth.oidc]`` (the routers as the server mounts them)."""
    from citeline.serving.app import create_app
    from citeline.settings import Settings
    from tests.unit.test_serving_routes import _fake

    oidc = {"issuer": "https://idp.example", "client_id": "citeline", "client_secret": "s" * 32,
            "redirect_url": "https://citeline.example/auth/callback", "admin_groups": ["admins"]}
    for settings, flag in ((Settings(), 'data-oidc="off"'), (Settings(auth={"oidc": oidc}), 'data-oidc="on"')):
        fake = _fake()
        fake.settings = settings
        assert flag in TestClient(create_app(fake)).get("/admin").text  # type: ignore[arg-type]
