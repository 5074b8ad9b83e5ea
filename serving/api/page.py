"""The pages: the chat page (``GET /``) and the admin page (``GET /admin``), static files, no build step.

The chat page is one HTML file; the admin page is ``admin.html`` with its own ``admin.js`` and ``admin.css``
(served here, so the page loads nothing from another origin and needs no inline script). The admin page
only calls the admin API (``/v1/admin/...``); people sign in with an API key, or with the identity provider
when OpenID Connect is configured (the page then shows its button, which starts ``/auth/login``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

__all__ = ["STATIC", "router"]

STATIC = Path(__file__).parent.parent / "static"
_ASSETS = {"admin.js": "text/javascript; charset=utf-8", "admin.css": "text/css; charset=utf-8"}

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
def admin_page(request: Request) -> HTMLResponse:
    html = (STATIC / "admin.html").read_text(encoding="utf-8")
    return HTMLResponse(html.replace('data-oidc="off"', 'data-oidc="on"') if _oidc_login(request) else html)


@router.get("/admin/{asset}", include_in_schema=False)
def admin_asset(asset: str) -> Response:
    if asset not in _ASSETS:  # a fixed list: nothing else under static/ is reachable by name
        return Response("not found", status_code=404, media_type="text/plain")
    return Response((STATIC / asset).read_text(encoding="utf-8"), media_type=_ASSETS[asset])


def _oidc_login(request: Request) -> bool:
    """Whether the identity provider's sign-in is offered: :func:`citeline.serving.api.auth.install` set up its
    sessions (it does only when ``[auth.oidc]`` is set, and mounts ``/auth/login`` with them)."""
    return getattr(request.app.state, "sessions", None) is not None
