"""A real HTTP server on loopback that answers like one vendor API, for connectors whose service cannot run here.

Each API is a :class:`FakeApi` subclass (``tests/support/apis/<name>.py``): it holds the source's state
(items, permissions, deletions: tests change it between syncs) and renders every answer in the vendor's
documented wire format — the same pagination, field names, error bodies and headers as the recorded
responses under ``tests/fixtures/replay/<name>/``. :class:`ReplayServer` runs it in a thread and adds what
every API has:

* authentication: a request without the expected credentials gets ``api.error(401, ...)``;
  :meth:`ReplayServer.expire_credentials` makes every request answer that (an expired token);
* faults: :meth:`ReplayServer.fail_next` makes the next N requests whose path starts with a prefix answer a
  given status (``429`` with ``Retry-After``, ``500``, ``503``) in the API's own error shape;
* a log of every request (:attr:`ReplayServer.requests`) so tests can assert what the connector asked for.

The connectors under test talk to it over real sockets with their real HTTP client; nothing in Python is
patched.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeApi", "Fault", "ReplayServer", "Reply", "Request"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able (sent as application/json), or str/bytes sent as is
    headers: dict[str, Any] = field(default_factory=dict)  # a list value sends the header once per item (Set-Cookie)


@dataclass
class Fault:
    path_prefix: str
    status: int
    times: int
    headers: dict[str, str]
    message: str


class FakeApi:
    """One vendor API: override :meth:`handle`, :meth:`authorized` and :meth:`error`."""

    def authorized(self, request: Request) -> bool:
        raise NotImplementedError

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Reply:
        """An error in this API's documented error shape."""
        return Reply(status, {"message": message})


class ReplayServer:
    """Serve a :class:`FakeApi` on ``127.0.0.1:<free port>`` until :meth:`stop` (or the ``with`` block ends)."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.requests: list[Request] = []
        self._faults: list[Fault] = []
        self._expired = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="replay-server", daemon=True)  # stop() waits one poll

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, path_prefix: str, status: int, *, times: int = 1, headers: Mapping[str, str] | None = None,
                  message: str | None = None) -> None:
        """The next ``times`` requests under ``path_prefix`` answer ``status`` (e.g. 429 + Retry-After, 500)."""
        with self._lock:
            self._faults.append(Fault(path_prefix, status, times, dict(headers or {}),
                                      message or f"injected {status}"))

    def expire_credentials(self, expired: bool = True) -> None:
        """Every request answers 401 in the API's error shape, as if the token had expired."""
        self._expired = expired

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def _reply(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            for fault in self._faults:
                if fault.times > 0 and request.path.startswith(fault.path_prefix):
                    fault.times -= 1
                    reply = self.api.error(fault.status, fault.message)
                    reply.headers.update(fault.headers)
                    return reply
        if self._expired or not self.api.authorized(request):
            return self.api.error(401, "the credentials are missing, invalid or expired")
        try:
            return self.api.handle(request)
        except Exception as exc:  # a bug in a fake must show up as a 500, never hang the connector
            return self.api.error(500, f"fake server error: {type(exc).__name__}: {exc}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: without this, keep-alive
            # requests wait ~40 ms for the client's delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                                  {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                reply = server._reply(request)
                if isinstance(reply.body, bytes | str):
                    payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
                    content_type = reply.headers.pop("Content-Type", "text/plain; charset=utf-8")
                else:
                    payload = b"" if reply.body is None else json.dumps(reply.body).encode()
                    content_type = reply.headers.pop("Content-Type", "application/json; charset=utf-8")
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    for item in value if isinstance(value, list) else [value]:
                        self.send_header(name, item)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler
