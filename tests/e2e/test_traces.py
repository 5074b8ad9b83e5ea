"""A real ``citeline serve`` exports its spans to an OTLP collector and writes JSON log lines, configured only by
the documented variables (OTEL_EXPORTER_OTLP_ENDPOINT, CITELINE_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, run_server

pytestmark = pytest.mark.e2e


class _Collector:
    """An OTLP/HTTP collector stand-in: keeps every ``/v1/traces`` request body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[str, dict[str, str], str]]:
        """(name, string attributes, service name) of every span received."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        out = []
        for body in list(self.bodies):
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name", "")
                for scope in rs.scope_spans:
                    for s in scope.spans:
                        attrs = {a.key: a.value.string_value for a in s.attributes}
                        out.append((s.name, attrs, service))
        return out


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory, pg_url, embedder) -> Iterator[tuple[Server, _Collector]]:
    collector = _Collector()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "citeline-e2e",
           "OTEL_BSP_SCHEDULE_DELAY": "200", "CITELINE_LOG_FORMAT": "json", "CITELINE_LOG_LEVEL": "INFO"}
    try:
        with run_server(tmp_path_factory.mktemp("traced"), pg_url, embedder, extra_env=env) as srv:
            yield srv, collector
    finally:
        collector.server.shutdown()


def test_a_served_answer_reaches_the_collector_and_the_json_log(traced_server):
    srv, collector = traced_server
    r = httpx.post(f"{srv.url}/v1/ask", json={"question": "How do I roll back a deploy?"}, timeout=120,
                   headers={"Authorization": f"Bearer {srv.keys['alice']}", "X-Request-ID": "e2e-trace-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-trace-1"
    deadline, mine = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        mine = [(n, svc) for n, a, svc in collector.spans() if a.get("citeline.request_id") == "e2e-trace-1"]
        if {"auth", "retrieve", "audit", "POST /v1/ask"} <= {n for n, _ in mine}:
            break
        time.sleep(0.3)
    names = {n for n, _ in mine}
    assert {"POST /v1/ask", "auth", "answer", "retrieve", "audit"} <= names, names
    assert {svc for _, svc in mine} == {"citeline-e2e"}
    lines = [json.loads(x) for x in srv.log.read_text().splitlines() if x.startswith("{")]
    request = [x for x in lines if x.get("request_id") == "e2e-trace-1" and x["logger"] == "citeline.serving.requests"]
    assert request and request[0]["principal"] == "alice" and request[0]["message"].startswith("POST /v1/ask 200")
    assert srv.keys["alice"] not in srv.log.read_text()
