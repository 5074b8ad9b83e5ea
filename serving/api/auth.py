"""Sign-in with OpenID Connect for the chat and admin pages: ``/auth/login``, ``/auth/callback``, ``/auth/logout``.

Present only when ``[auth.oidc]`` is set (:func:`install`); the protocol and the cookies are
:mod:`citeline.serving.auth_oidc`'s. At each sign-in the principal named by the ID token (``auth.oidc.
principal_claim``) is created or updated with the token's groups (``auth.oidc.groups_claim``; its team is
kept) through ``cl.admin``, so the change commits with its audit row, whose actor is the identity provider
(``idp <issuer>``). Members of ``auth.oidc.admin_groups`` are admins. ``GET /auth/session`` says who the
cookie signs in (the pages ask it).

==================  ====  ===========================================================================
``/auth/login``     GET   redirect to the provider (``?next=/path`` of this site to come back to)
``/auth/callback``  GET   the provider's redirect: code → ID token checked → session cookie → ``next``
``/auth/logout``    GET   end the session, clear the cookie, back to ``/``
``/auth/session``   GET   ``{user, groups, admin, expires_at}`` of the signed-in session (401 without)
==================  ====  ===========================================================================
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from citeline.domain import Principal
from citeline.errors import AuthError, PrincipalError
from citeline.facade import Authenticated, Citeline
from citeline.serving.auth_oidc import LOGIN_COOKIE, SESSION_COOKIE, OidcClient, PendingLogins, Sessions

__all__ = ["install", "session_lookup"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/auth", include_in_schema=False)


def session_lookup(cl: Citeline) -> Callable[[str, str], Authenticated]:
    """``(user, session id) -> Authenticated``: the principal as the database has it now; admins by group."""
    oidc = cl.settings.auth.oidc
    admin_groups = set(oidc.admin_groups) if oidc else set()

    def lookup(user: str, sid: str) -> Authenticated:
        try:
            principal = cl.principals.get(user)
        except PrincipalError:
            raise AuthError(f"principal {user!r} no longer exists: sign in again at /auth/login") from None
        return Authenticated(f"session:{sid[:12]}", principal, bool(admin_groups.intersection(principal.groups)))

    return lookup


def install(app: FastAPI, cl: Citeline) -> Sessions | None:
    """Add the routes and ``app.state.oidc`` / ``app.state.sessions`` when ``[auth.oidc]`` is set."""
    oidc = cl.settings.auth.oidc
    if oidc is None:
        app.state.sessions = None
        return None
    app.state.oidc = OidcClient(oidc)
    app.state.pending_logins = PendingLogins(oidc.login_timeout_s)
    app.state.sessions = sessions = Sessions(oidc, session_lookup(cl))
    app.include_router(router)
    return sessions


def _local(path: str) -> str:
    """``path`` if it is a path of this site (no scheme, host or ``//``), else ``/``: no open redirects."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


@router.get("/login")
def login(request: Request, next: Annotated[str, Query(max_length=2000)] = "/") -> RedirectResponse:
    client: OidcClient = request.app.state.oidc
    state, pending = request.app.state.pending_logins.start(_local(next))
    reply = RedirectResponse(client.authorization_url(state, pending), status_code=302)
    reply.set_cookie(LOGIN_COOKIE, state, max_age=client.settings.login_timeout_s, path="/auth/",
                     httponly=True, secure=request.app.state.sessions.secure, samesite="lax")
    return reply


@router.get("/callback")
def callback(request: Request, state: str = "", code: str = "", error: str = "",
             error_description: str = "") -> Response:
    if error:
        raise AuthError(f"the identity provider refused the sign-in: {error} {error_description}".strip())
    if not state or not code:
        raise AuthError("the callback needs state and code: start at /auth/login")
    pending = request.app.state.pending_logins.take(state)  # first: a state is spent by any use, even a refused one
    bound = request.cookies.get(LOGIN_COOKIE, "")
    if not hmac.compare_digest(bound.encode(), state.encode()):
        raise AuthError("this login was not started in this browser: start again at /auth/login")
    client: OidcClient = request.app.state.oidc
    claims = client.verify(client.exchange(code, pending), pending.nonce)
    who = client.identity(claims)
    cl: Citeline = request.app.state.citeline
    try:
        team = cl.principals.get(who.user).team
    except PrincipalError:
        team = None
    try:
        principal = Principal(who.user, who.groups, team)
    except ValueError as exc:
        raise AuthError(f"the ID token names a principal citeline cannot hold: {exc}") from None
    cl.admin.add_principal(principal, actor=f"idp {client.settings.issuer}")
    log.info("signed in %s through %s with groups %s", who.user, client.settings.issuer, list(principal.groups))
    sessions: Sessions = request.app.state.sessions
    reply = RedirectResponse(pending.next, status_code=303)
    reply.set_cookie(SESSION_COOKIE, sessions.issue(who.user), max_age=client.settings.session_lifetime_s,
                     path="/", httponly=True, secure=sessions.secure, samesite="lax")
    reply.delete_cookie(LOGIN_COOKIE, path="/auth/")
    return reply


@router.get("/logout")
def logout(request: Request) -> RedirectResponse:
    sessions: Sessions = request.app.state.sessions
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        sessions.end(cookie)
    reply = RedirectResponse("/", status_code=303)
    reply.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=sessions.secure, samesite="lax")
    return reply


@router.get("/session")
def session(request: Request) -> JSONResponse:
    sessions: Sessions = request.app.state.sessions
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise AuthError("not signed in: open /auth/login")
    data = sessions.read(cookie)
    who = sessions.authenticate(cookie)
    return JSONResponse({"user": who.principal.user, "groups": list(who.principal.groups), "admin": who.is_admin,
                         "expires_at": data["exp"]}, headers={"Cache-Control": "no-store"})
