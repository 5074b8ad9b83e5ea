"""The outermost middleware: security headers, ``Server-Timing`` and request counts on every response."""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citeline.serving.metrics import Metrics

__all__ = ["SECURITY_HEADERS", "Edge"]

SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store"}


class Edge:
    """Security headers, ``Server-Timing`` and request counts on every response.

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

        async def start(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
                route = scope.get("route")  # set by the router, which shares this scope
                self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, start)
