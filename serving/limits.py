"""Limits before work: a ``/v1`` request is authenticated, rate limited and size-checked before its body is read.

:class:`Limits` is a pure ASGI middleware (inside ``_Edge``, so its answers carry the security headers and
are counted). For every path under ``/v1/`` (all of them need an API key), in this order:

1. a NUL byte in the path or query string: 400 (the database cannot store it; nothing else may use it);
2. the client address's failed-login budget (``server.auth_failures_per_minute`` / ``auth_failure_burst``):
   when it is spent, 429 for any key that has not authenticated on this server before, without looking it
   up (so guessing keys, or flooding the key table with lookups, is slowed; colleagues behind the same
   proxy whose keys work are not locked out);
3. the key, from the ``Authorization`` header only: 401 without reading the body (a missing key costs no
   database round trip; a presented one costs the one lookup the endpoint would have made, done here once
   and handed on in ``scope["state"]``); without a key, a page's OIDC session cookie when sign-in is set up
   (:mod:`citeline.serving.auth_oidc`; a bad or expired one is 401 the same way);
4. the key's rate (``server.rate_limit_per_minute`` / ``rate_limit_burst``, a token bucket): 429 with
   ``Retry-After`` (seconds);
5. the body: a ``Content-Length`` over ``server.max_body_bytes`` is 413 at once; a chunked body is counted
   while it arrives and is 413 as soon as it passes the limit. The body (at most the limit) is then
   replayed to the app.

A request refused before its body was read is answered with ``Connection: close``, so the server does not
go on reading what it will not use. Probes (``/healthz``, ``/readyz``, ``/metrics``), the chat page and
the API docs are never limited. Rejections are counted in ``citeline_rejected_requests_total{reason}``.
Buckets live in this process (one server process; several replicas each limit on their own).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citeline.errors import AuthError, DatabaseError
from citeline.facade import Authenticated
from citeline.serving.auth_oidc import SESSION_COOKIE, Sessions
from citeline.serving.metrics import Metrics
from citeline.settings import ServerSettings
from citeline.tracing import set_principal, span

__all__ = ["AUTH_STATE", "KnownKeys", "Limits", "TokenBuckets"]

AUTH_STATE = "citeline_auth"  # scope["state"] key: (Authenticated, lookup ms), read by the endpoints' dependency
_PROTECTED = "/v1/"
_MAX_ADDRESSES = 65536  # failed-login buckets kept (least recently used dropped first)
_MAX_KNOWN = 65536  # digests of keys that authenticated, remembered for step 2


class TokenBuckets:
    """Token buckets by name: ``rate`` tokens per second up to ``burst``; at most ``max_names`` kept (LRU).

    Used from the event loop only (no lock). A dropped bucket comes back full, so ``max_names`` must be
    well above the number of names that are limited at once.
    """

    def __init__(self, per_minute: int, burst: int, max_names: int = _MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_names = max_names
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # name -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _level(self, name: str) -> float:
        tokens, at = self._buckets.get(name, (self.burst, self.clock()))
        return min(self.burst, tokens + (self.clock() - at) * self.rate)

    def wait_s(self, name: str) -> int:
        """0 if ``name`` has a token now, else whole seconds until it will (for ``Retry-After``)."""
        if not self.enabled:
            return 0
        level = self._level(name)
        return 0 if level >= 1 else max(1, math.ceil((1 - level) / self.rate))

    def take(self, name: str) -> int:
        """Spend one token: 0 if there was one, else the ``Retry-After`` seconds (nothing spent)."""
        wait = self.wait_s(name)
        if self.enabled and not wait:
            self._buckets[name] = (self._level(name) - 1, self.clock())
            self._buckets.move_to_end(name)
            while len(self._buckets) > self.max_names:
                self._buckets.popitem(last=False)
        return wait


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _session_cookie(headers: Headers) -> str | None:
    return cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE) or None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class KnownKeys:
    """The digests (never the keys) of the keys that authenticated lately, at most ``size`` of them, the least
    recently seen dropped first: a known key is not held back by its address's failed logins (step 2)."""

    def __init__(self, size: int = _MAX_KNOWN) -> None:
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._size = size

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and _digest(token) in self._digests

    def remember(self, token: str | None) -> None:
        if token is None:
            return
        digest = _digest(token)
        self._digests[digest] = None
        self._digests.move_to_end(digest)
        while len(self._digests) > self._size:
            self._digests.popitem(last=False)


class Limits:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, *, settings: ServerSettings, authenticate: Callable[[str | None], Authenticated],
                 metrics: Metrics, lookups: int = 8, sessions: Sessions | None = None) -> None:
        self.app = app
        self.sessions = sessions  # OIDC sign-in: a page's session cookie stands in for a missing key
        self.settings = settings
        self.authenticate = authenticate
        self.metrics = metrics
        self.keys = TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst, max_names=_MAX_KNOWN)
        self.failures = TokenBuckets(settings.auth_failures_per_minute, settings.auth_failure_burst)
        self._known = KnownKeys()
        self._lookups = anyio.CapacityLimiter(lookups)  # key lookups in threads, beside (not behind) requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_PROTECTED):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        unread = headers.get("content-length", "0") != "0" or "chunked" in headers.get("transfer-encoding", "")
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            await self._refuse(scope, receive, send, 400, "the URL contains a NUL byte (%00); remove it",
                               "invalid_text", "bad_text", unread)
            return
        token = _bearer(headers)
        address = (scope.get("client") or ("unknown",))[0]
        known = token in self._known
        if not known and (wait := self.failures.wait_s(address)):
            await self._refuse(scope, receive, send, 429, f"too many failed logins from {address}; retry in {wait} s "
                               "(server.auth_failures_per_minute)", "rate_limit_exceeded", "auth_rate_limited",
                               unread, retry_after=wait)
            return
        t0 = time.perf_counter()
        cookie = None if token is not None or self.sessions is None else _session_cookie(headers)
        try:
            who = await (self._session(cookie, scope, headers) if cookie else self._authenticate(token))
        except AuthError as exc:
            self.failures.take(address)
            self.metrics.auth_failures.inc()
            await self._refuse(scope, receive, send, 401, str(exc), "invalid_api_key", "unauthenticated", unread)
            return
        except (DatabaseError, psycopg.OperationalError) as exc:  # no connection, or a lock/statement timeout
            retry = self.settings.retry_after_s
            await self._refuse(scope, receive, send, 503, f"the API key could not be checked: the database did not "
                               f"answer in time ({type(exc).__name__}); retry after {retry} s", "database_unavailable",
                               "database_unavailable", unread, retry_after=retry)
            return
        auth_ms = (time.perf_counter() - t0) * 1000
        self._known.remember(token)
        if wait := self.keys.take(who.key_id):
            await self._refuse(scope, receive, send, 429, f"rate limit of API key {who.key_id} exceeded "
                               f"({self.settings.rate_limit_per_minute} requests per minute, bursts of "
                               f"{self.settings.rate_limit_burst}: server.rate_limit_per_minute); retry in "
                               f"{wait} s", "rate_limit_exceeded", "rate_limited", unread, retry_after=wait)
            return
        limit = self.settings.max_body_bytes
        too_large = (f"the request body is over this server's limit of {limit} bytes (server.max_body_bytes, "
                     "CITELINE_SERVER__MAX_BODY_BYTES)")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._refuse(scope, receive, send, 413, too_large, "body_too_large", "body_too_large", unread)
            return
        body = await self._read(receive, limit)
        if body is None:
            await self._refuse(scope, receive, send, 413, too_large, "body_too_large", "body_too_large", True)
            return
        scope.setdefault("state", {})[AUTH_STATE] = (who, auth_ms)
        await self.app(scope, _replay(body, receive), send)

    async def _authenticate(self, token: str | None) -> Authenticated:
        """The key's principal, looked up in a span ``auth``; names the principal for the request's logs."""
        with span("auth") as s:
            if token is None:
                self.authenticate(None)  # raises at once, no database: the message says how to send a key
            who = await anyio.to_thread.run_sync(self.authenticate, token, limiter=self._lookups)
            s.set_attribute("citeline.key_id", who.key_id)
        set_principal(who.principal.user)
        return who

    async def _session(self, cookie: str, scope: Scope, headers: Headers) -> Authenticated:
        """The principal of a signed-in page's session cookie (:mod:`citeline.serving.auth_oidc`)."""
        assert self.sessions is not None
        with span("auth") as s:
            who = await anyio.to_thread.run_sync(self.sessions.authenticate, cookie, scope["method"],
                                                 headers.get("origin"), headers.get("host"), limiter=self._lookups)
            s.set_attribute("citeline.key_id", who.key_id)
        set_principal(who.principal.user)
        return who

    @staticmethod
    async def _read(receive: Receive, limit: int) -> list[Message] | None:
        """The body's messages, or None as soon as they pass ``limit`` bytes (the rest is never read)."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # the client went away: the app sees that as it would have
            size += len(message.get("body", b""))
            if size > limit:
                return None
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str,
                      reason: str, unread: bool, retry_after: int | None = None) -> None:
        self.metrics.rejected.labels(reason).inc()
        headers: dict[str, Any] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if unread:
            headers["Connection"] = "close"  # do not read on a body nobody will use
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: disconnects, for streaming responses

    return replayed
