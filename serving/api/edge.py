"""The outermost middleware: the request id, the request's span, security headers, ``Server-Timing`` and
request counts on every response."""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citeline.serving.metrics import Metrics
from citeline.tracing import REQUEST_ID_ATTR, REQUEST_ID_HEADER, accept_request_id, request_context, span

__all__ = ["SECURITY_HEADERS", "Edge"]

log = logging.getLogger("citeline.serving.requests")
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store"}


_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})  # polled every few seconds: a request id, no span


class Edge:
    """The request id, security headers, ``Server-Timing`` and request counts on every response.

    The request id is the client's ``X-Request-ID`` when it is sane (1–128 ASCII letters, digits and
    ``._:-``), else a new one (a refused header is neither echoed nor logged); it is returned in
    ``X-Request-ID`` and set for everything the request does (:func:`citeline.tracing.request_context`):
    its spans, audit rows and log lines. The request's span is FastAPI's own server span (its native
    OpenTelemetry support, which also continues a caller's ``traceparent``), given the request id; with a
    FastAPI that has none, Edge opens ``METHOD /route`` itself (not for the probes). Each request but a probe
    is logged at INFO (``citeline.serving.requests``: method, route template, status, milliseconds).

    A plain ASGI middleware: ``@app.middleware("http")`` would run each request in an extra task and
    copy its body through a stream, which costs more than everything citeline does for a cached question.
    ``Server-Timing: app;dur=`` is what this process spent on the request up to its first byte, waiting
    for a request thread included (https://www.w3.org/TR/server-timing/).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid, _ = accept_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        status = 0

        async def start(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers[REQUEST_ID_HEADER] = rid
                headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
                route = scope.get("route")  # set by the router, which shares this scope
                self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(message["status"])).inc()
            await send(message)

        with request_context(rid):
            server = trace.get_current_span()  # FastAPI's own server span, when its telemetry is on
            if server.is_recording() or scope["path"] in _UNTRACED:
                server.set_attribute(REQUEST_ID_ATTR, rid)
                await self.app(scope, receive, start)
            else:  # a FastAPI without native telemetry: the request's span is ours
                with span(scope["method"]) as s:
                    await self.app(scope, receive, start)
                    s.update_name(f"{scope['method']} {_route(scope)}")
                    s.set_attributes({"http.request.method": scope["method"], "http.route": _route(scope),
                                      "http.response.status_code": status})
            if scope["path"] in _UNTRACED:
                return
            # the route's template, never the raw path; the request id and principal come with the record
            log.info("%s %s %d %.1f ms", scope["method"], _route(scope), status, (time.perf_counter() - t0) * 1000)


def _route(scope: Scope) -> str:
    """The matched route's template (``/v1/admin/keys/{key_id}``), never the raw path (ids, hostile text)."""
    return getattr(scope.get("route"), "path", None) or "unmatched"
