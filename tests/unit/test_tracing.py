"""citeline.tracing without services: request ids, spans, JSON log lines, exporter set-up errors."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from citeline import tracing
from citeline.errors import ConfigError
from tests.support.spans import json_log_lines, one, span_exporter

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", ["a", "req-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "x" * 128, "a.b:c_d-e"])
def test_a_sane_request_id_is_kept(value):
    assert tracing.accept_request_id(value) == (value, True)


@pytest.mark.parametrize("value", [None, "", "x" * 129, "a\nb", "a\r\nX-Injected: 1", "é", "ид", "a b", "a\x00",
                                   '"quoted"', "a/b", "<script>"])
def test_anything_else_is_replaced_by_a_new_id(value):
    rid, accepted = tracing.accept_request_id(value)
    assert not accepted and rid != value and len(rid) == 32 and int(rid, 16) >= 0


def test_request_context_nests_and_resets():
    assert tracing.current_request_id() is None
    with tracing.request_context("outer", "alice") as outer:
        assert outer == "outer" and tracing.current_principal() == "alice"
        with tracing.request_context() as inner:
            assert tracing.current_request_id() == inner != "outer" and tracing.current_principal() is None
        assert tracing.current_request_id() == "outer"
    assert tracing.current_request_id() is None and tracing.current_principal() is None


def test_spans_carry_the_request_id_and_nest():
    exporter = span_exporter()
    with tracing.request_context("rid-1"), tracing.span("outer", n=3, skipped=None):
        with tracing.span("inner"):
            pass
        t = tracing.now_ns()
        tracing.record_span("measured", t - 5_000_000, t, count=7)
    spans = exporter.get_finished_spans()
    outer, inner, measured = one(spans, "outer"), one(spans, "inner"), one(spans, "measured")
    assert outer.attributes == {"citeline.n": 3, "citeline.request_id": "rid-1"}
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert measured.parent is not None and measured.parent.span_id == outer.context.span_id
    assert measured.end_time - measured.start_time == 5_000_000 and measured.attributes["citeline.count"] == 7


def test_a_failing_block_marks_its_span_an_error():
    exporter = span_exporter()
    with pytest.raises(ValueError), tracing.span("boom"):
        raise ValueError("no")
    s = one(exporter.get_finished_spans(), "boom")
    assert s.status.status_code.name == "ERROR" and s.events[0].name == "exception"


def test_traced_with_request_makes_an_id_only_when_none_is_set():
    seen: list[str | None] = []

    @tracing.traced("work", request=True)
    def work() -> None:
        seen.append(tracing.current_request_id())

    exporter = span_exporter()
    work()
    with tracing.request_context("given"):
        work()
    assert seen[0] is not None and len(seen[0]) == 32 and seen[1] == "given"
    assert [s.attributes["citeline.request_id"] for s in exporter.get_finished_spans()] == seen


def test_in_context_carries_the_trace_and_id_to_another_thread_and_leaves_it_clean():
    exporter = span_exporter()
    with tracing.request_context("threaded", "bob"), tracing.span("parent") as parent:
        ctx = tracing.capture()

    def steps() -> Iterator[object]:
        with tracing.span("child"):
            yield tracing.current_request_id(), tracing.current_principal()
            yield "second"

    out: list[object] = []

    def other() -> None:
        out.extend(tracing.in_context(ctx, steps()))
        out.append(tracing.current_request_id())  # nothing left behind in this thread

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    child = one(exporter.get_finished_spans(), "child")
    assert child.parent is not None and child.parent.span_id == parent.get_span_context().span_id
    assert out == [("threaded", "bob"), "second", None]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    with json_log_lines() as stream:
        yield stream


def test_json_log_lines_parse_and_carry_the_request_context(json_log):
    log = logging.getLogger("citeline.test")
    with tracing.request_context("rid-json", "alice"):
        log.info("hello %s", "line\nbreak \x1b[31m")
    log.warning("outside")
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        log.exception("failed")
    lines = json_log.getvalue().splitlines()
    assert len(lines) == 3  # a newline in a message stays inside its one line
    first, second, third = (json.loads(x) for x in lines)
    assert first["message"] == "hello line\nbreak \x1b[31m" and first["request_id"] == "rid-json"
    assert first["principal"] == "alice" and first["level"] == "INFO" and first["logger"] == "citeline.test"
    assert "request_id" not in second and "principal" not in second
    assert "RuntimeError: bad" in third["exc"]


def test_configure_logging_refuses_bad_names_and_does_not_take_over_others_handlers():
    with pytest.raises(ConfigError, match="CITELINE_LOG_FORMAT"):
        tracing.configure_logging("INFO", "xml")
    with pytest.raises(ConfigError, match="CITELINE_LOG_LEVEL"):
        tracing.configure_logging("LOUD", "text")
    root = logging.getLogger()
    before = list(root.handlers)
    assert before  # pytest's own capture handlers: an embedding application owns logging
    tracing.configure_logging("INFO", "json")
    assert root.handlers == before


def test_text_lines_name_the_request_id():
    stream = io.StringIO()
    tracing.configure_logging("INFO", "text", stream=stream)
    try:
        with tracing.request_context("rid-text"):
            logging.getLogger("citeline.test").info("inside")
        logging.getLogger("citeline.test").info("outside")
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "citeline", False)]:
            root.removeHandler(h)
    assert stream.getvalue().splitlines() == ["INFO:citeline.test:inside [request_id=rid-text]",
                                              "INFO:citeline.test:outside"]


def test_configure_tracing_follows_the_otel_variables(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure_tracing() is False  # nothing asked for: the API's no-op spans
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="otlp, console or none"):
        tracing.configure_tracing()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing.configure_tracing() is False  # an explicit none wins over an endpoint


def test_an_otlp_collector_receives_the_spans_of_a_process(tmp_path):
    """A real OTLP/HTTP export: a child process configured only by OTEL_* variables posts its spans (protobuf)
    to a collector stand-in at /v1/traces when it exits."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        import os
        import subprocess
        import sys

        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
               "OTEL_SERVICE_NAME": "citeline-test"}
        env.pop("OTEL_TRACES_EXPORTER", None)
        code = ("from citeline import tracing\nassert tracing.configure_tracing()\n"
                "with tracing.request_context('rid-otlp'), tracing.span('exported', n=1):\n    pass\n")
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert [(p, t) for p, t, _ in received] == [("/v1/traces", "application/x-protobuf")]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest.FromString(received[0][2])
    resource = request.resource_spans[0]
    assert {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"] == "citeline-test"
    (span,) = resource.scope_spans[0].spans
    assert span.name == "exported"
    assert {a.key: a.value.string_value for a in span.attributes}["citeline.request_id"] == "rid-otlp"


def test_the_deploy_files_probe_the_port_the_scheduler_listens_on():
    import yaml

    from tests.conftest import REPO

    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["scheduler"]
    port = compose["command"][compose["command"].index("--http-port") + 1]
    assert f"127.0.0.1:{port}/healthz" in " ".join(compose["healthcheck"]["test"])
    [k8s] = [d for d in yaml.safe_load_all((REPO / "deploy" / "k8s" / "scheduler.yaml").read_text())
             if d and d["kind"] == "Deployment"]
    [main] = k8s["spec"]["template"]["spec"]["containers"]
    port_k8s = main["args"][main["args"].index("--http-port") + 1]
    assert {p["name"]: p["containerPort"] for p in main["ports"]}["metrics"] == int(port_k8s)
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {e["name"]: e.get("value") for e in main["env"]}["CITELINE_SCHEDULER__HTTP_HOST"] == "0.0.0.0"


def test_a_stream_closed_from_another_thread_does_not_raise(caplog):
    """A streamed answer read on one thread and closed on another (a client gone, a generator finalised
    elsewhere): no error, no "Failed to detach context", and no request id left in either thread."""
    exporter = span_exporter()
    with tracing.request_context("streamed"):
        ctx = tracing.capture()

    def deltas() -> Iterator[str | None]:
        with tracing.span("generate"):
            yield tracing.current_request_id()
            yield "never"

    stream = tracing.in_context(ctx, deltas())
    assert next(stream) == "streamed" and tracing.current_request_id() is None
    errors: list[BaseException] = []

    def close() -> None:
        try:
            stream.close()
        except BaseException as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    thread = threading.Thread(target=close)
    thread.start()
    thread.join()
    assert not errors and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert one(exporter.get_finished_spans(), "generate").attributes["citeline.request_id"] == "streamed"
