"""The MCP server over streamable HTTP: every request authenticated by its API key before the SDK sees it.

:class:`BearerKeys` is a pure ASGI middleware around the SDK's Starlette app. Every HTTP request (``POST``,
``GET`` and ``DELETE`` on ``/mcp`` alike) must carry ``Authorization: Bearer cl_...``; the key is looked up on
every request (a revoked key stops working at once, also inside a session that it opened), and the caller is
put in the request's ASGI scope, from where the tools read it (:data:`citeline.serving.mcp.AUTH_SCOPE_KEY`).
A session id gives no access of its own: each request acts as its own key's principal.

A missing, malformed, unknown or revoked key is answered ``401`` with ``WWW-Authenticate: Bearer`` and a body
that says what is wrong and how to fix it (the key's secret is never logged or echoed), as the REST API does:
refusals are logged with the client address and count against that address's failed-login budget
(``server.auth_failures_per_minute`` / ``auth_failure_burst``; spent: ``429`` with ``Retry-After``, except for
keys that have authenticated here before). ``/healthz`` answers without a key (a liveness probe).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import anyio
import anyio.to_thread
import psycopg
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from citeline.errors import AuthError, DatabaseError
from citeline.facade import Authenticated, Citeline
from citeline.serving.limits import KnownKeys, TokenBuckets
from citeline.serving.mcp import AUTH_SCOPE_KEY, build_server
from citeline.settings import ServerSettings

__all__ = ["MCP_PATH", "BearerKeys", "http_app", "serve_http"]

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
_HEALTH = "/healthz"


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class BearerKeys:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, *, authenticate: Callable[[str | None], Authenticated],
                 settings: ServerSettings, lookups: int = 8) -> None:
        self.app = app
        self.authenticate = authenticate
        self.settings = settings
        self.failures = TokenBuckets(settings.auth_failures_per_minute, settings.auth_failure_burst)
        self._known = KnownKeys()
        self._lookups = anyio.CapacityLimiter(lookups)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the SDK's session manager starts and stops with the app
            await self.app(scope, receive, send)
            return
        if scope["path"] == _HEALTH:
            await _reply(send, 200, {"status": "ok"})
            return
        token = _bearer(Headers(scope=scope))
        address = (scope.get("client") or ("unknown",))[0]
        known = token in self._known
        if not known and (wait := self.failures.wait_s(address)):
            await _reply(send, 429, {"error": "too_many_failures", "error_description": f"too many failed logins "
                                     f"from {address}; retry in {wait} s (server.auth_failures_per_minute)"},
                         {"retry-after": str(wait)})
            return
        try:
            if token is None:
                self.authenticate(None)  # raises at once, without the database: the message says how
            who = await anyio.to_thread.run_sync(self.authenticate, token, limiter=self._lookups)
        except AuthError as exc:
            self.failures.take(address)
            log.warning("MCP request refused from %s: %s", address, exc)  # the message names the key id, never
            await _unauthorized(send, str(exc))  # its secret
            return
        except (DatabaseError, psycopg.OperationalError) as exc:
            retry = self.settings.retry_after_s
            await _reply(send, 503, {"error": "database_unavailable", "error_description": "the API key could not "
                                     f"be checked: the database did not answer ({type(exc).__name__}); retry after "
                                     f"{retry} s"}, {"retry-after": str(retry)})
            return
        self._known.remember(token)
        scope[AUTH_SCOPE_KEY] = who
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, message: str) -> None:
    quoted = message.replace("\\", "/").replace('"', "'")
    await _reply(send, 401, {"error": "invalid_token", "error_description": message},
                 {"www-authenticate": f'Bearer error="invalid_token", error_description="{quoted}"'})


async def _reply(send: Send, status: int, body: dict[str, str], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
           *((k.encode(), v.encode("latin-1", "replace")) for k, v in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def http_app(cl: Citeline, *, host: str = "127.0.0.1") -> ASGIApp:
    """The streamable HTTP app at :data:`MCP_PATH`, every request authenticated by :class:`BearerKeys`.

    ``host``: the interface served; on a loopback one the SDK also refuses other ``Host`` and ``Origin``
    headers (DNS rebinding protection)."""
    app = build_server(cl).streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    return BearerKeys(app, authenticate=cl.keys.authenticate, settings=cl.settings.server)


def serve_http(cl: Citeline, *, host: str, port: int, log_level: str = "warning") -> None:
    """Serve :func:`http_app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(http_app(cl, host=host), host=host, port=port, log_level=log_level, access_log=False)
