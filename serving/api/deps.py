"""What endpoints depend on, as FastAPI ``Annotated`` dependencies: the facade, the metrics, the caller.

The facade and the metrics come from ``app.state`` (set by :func:`citeline.serving.app.create_app`); their
dependencies are ``async`` so they cost no worker thread. The caller comes from the API key or, for the pages,
from the OpenID Connect session cookie (:data:`Auth`, :data:`Admin`: routes need not know which).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from citeline.facade import Authenticated, Citeline
from citeline.serving.auth_oidc import SESSION_COOKIE
from citeline.serving.limits import AUTH_STATE
from citeline.serving.metrics import Metrics

__all__ = ["Admin", "Auth", "Facade", "Meters", "actor"]


async def _facade(request: Request) -> Citeline:
    return request.app.state.citeline


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _principal(request: Request) -> Authenticated:
    """The caller's principal, from ``Authorization: Bearer cl_...`` or else the OIDC session cookie of a signed-in
    page (:mod:`citeline.serving.auth_oidc`; the same :class:`Authenticated`, admins by ``auth.oidc.admin_groups``),
    never from the request body.

    Under ``/v1`` the edge (:mod:`citeline.serving.limits`) looked the key up before reading the body and
    handed the result on; the lookup here is for routes outside it.
    """
    checked = request.scope.get("state", {}).get(AUTH_STATE)
    if checked is not None:
        request.state.auth_ms = checked[1]
        return checked[0]
    t0 = time.perf_counter()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    cl: Citeline = request.app.state.citeline
    sessions = getattr(request.app.state, "sessions", None)
    cookie = request.cookies.get(SESSION_COOKIE)
    if scheme.lower() != "bearer" and sessions is not None and cookie:  # a page signed in with OIDC
        who: Authenticated = sessions.authenticate(cookie, request.method, request.headers.get("origin"),
                                                   request.headers.get("host"))
    else:
        who = cl.keys.authenticate(token if scheme.lower() == "bearer" else None)
    request.state.auth_ms = (time.perf_counter() - t0) * 1000  # reported with the answer's stage latencies
    return who


def _admin(who: Annotated[Authenticated, Depends(_principal)]) -> Authenticated:
    if not who.is_admin:
        raise HTTPException(403, "this endpoint needs an admin key (`citeline keys create USER --admin`) or a "
                            "sign-in as a member of auth.oidc.admin_groups")
    return who


Facade = Annotated[Citeline, Depends(_facade)]
Meters = Annotated[Metrics, Depends(_metrics)]
Auth = Annotated[Authenticated, Depends(_principal)]
Admin = Annotated[Authenticated, Depends(_admin)]


def actor(who: Authenticated) -> str:
    """How the audit log names the admin behind a request."""
    return f"{who.principal.user} (key {who.key_id})"
