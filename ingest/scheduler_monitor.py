"""The scheduler's own HTTP listener: ``/metrics`` (Prometheus text) and ``/healthz`` (JSON).

``citeline scheduler`` opens it when ``scheduler.http_port`` (or ``--http-port``) is set; it is off by
default, so a scheduler on a laptop opens no port. It binds ``scheduler.http_host`` (default 127.0.0.1;
0.0.0.0 in a container, where a probe comes from outside). It serves only these two paths, GET only, logs no
request, and reveals no more than source names, counts and times.

``/healthz``: 200 while the scheduler's loop is alive: a sync is running, or the last pass ended within
``2 × tick + 30 s`` (or the loop started that recently); 503 once it is stopping or stuck. The body says when
the last pass ended, whether it worked (a pass fails while the database is down: that is reported, not a 503,
because restarting the scheduler would not help), and which source is syncing.

``/metrics``: runs by source and outcome, documents by source and change, the last run's and next run's
times, run durations, and whether a sync is running.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from citeline.errors import ConfigError
from citeline.ingest.scheduler import RunResult, Scheduler
from citeline.plugins import missing_module_error

__all__ = ["SchedulerMonitor"]

log = logging.getLogger(__name__)

_CHANGES = ("added", "updated", "unchanged", "deleted", "failed")
_GRACE = timedelta(seconds=30)


class SchedulerMonitor:
    """``/metrics`` and ``/healthz`` for ``scheduler`` on ``host:port`` (0: any free port), in a daemon thread.

    Pass :meth:`observe` as the scheduler's ``on_result``; :meth:`close` (or leaving the ``with`` block)
    stops the listener.
    """

    def __init__(self, scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            import prometheus_client as prom
        except ModuleNotFoundError as exc:
            raise missing_module_error("the scheduler's /metrics listener (scheduler.http_port)", exc) from exc
        self.scheduler = scheduler
        self.started = scheduler.clock()
        self.registry = reg = prom.CollectorRegistry()
        self.runs = prom.Counter("citeline_scheduler_runs", "sync runs the scheduler started, by outcome",
                                 ["source", "outcome"], registry=reg)
        self.documents = prom.Counter("citeline_scheduler_documents", "documents of scheduled runs, by change",
                                      ["source", "change"], registry=reg)
        self.last_run = prom.Gauge("citeline_scheduler_last_run_timestamp_seconds", "when the last run of a "
                                   "source started, by outcome (Unix time)", ["source", "outcome"], registry=reg)
        self.next_run = prom.Gauge("citeline_scheduler_next_run_timestamp_seconds", "when a source is due "
                                   "next (Unix time)", ["source"], registry=reg)
        self.seconds = prom.Histogram("citeline_scheduler_run_seconds", "duration of completed runs", ["source"],
                                      buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600), registry=reg)
        prom.Gauge("citeline_scheduler_syncing", "1 while a sync runs", registry=reg).set_function(
            lambda: 1.0 if scheduler.syncing else 0.0)
        prom.Gauge("citeline_scheduler_last_pass_timestamp_seconds", "when the last pass over the sources "
                   "ended (Unix time; 0: none yet)", registry=reg).set_function(
            lambda: scheduler.last_pass.timestamp() if scheduler.last_pass else 0.0)
        self._generate = prom.generate_latest
        self._content_type = prom.CONTENT_TYPE_LATEST
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise ConfigError(f"the scheduler cannot listen on {host}:{port} ({exc.strerror}): choose another "
                              "scheduler.http_port / --http-port, or leave it unset") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="citeline-scheduler-http",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> SchedulerMonitor:
        self._thread.start()
        log.info("scheduler: /metrics and /healthz on http://%s:%d", *self.address)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SchedulerMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def observe(self, result: RunResult) -> None:
        """Count one run (the scheduler's ``on_result``)."""
        self.runs.labels(result.source, result.outcome.value).inc()
        self.last_run.labels(result.source, result.outcome.value).set(result.started.timestamp())
        if result.next_run is not None:
            self.next_run.labels(result.source).set(result.next_run.timestamp())
        if result.report is not None:
            for change in _CHANGES:
                self.documents.labels(result.source, change).inc(getattr(result.report, change))
            self.seconds.labels(result.source).observe(result.report.seconds)

    def health(self) -> tuple[int, dict[str, Any]]:
        """The status code and body of ``/healthz``."""
        s = self.scheduler
        now = s.clock()
        fresh = now - (s.last_pass or self.started) <= 2 * s.tick + _GRACE
        ok = not s.stopping and (s.syncing is not None or fresh)
        status = "ok" if ok else "stopping" if s.stopping else "stuck"
        return (200 if ok else 503), {
            "status": status, "syncing": s.syncing, "last_pass": _iso(s.last_pass), "last_pass_ok": s.last_pass_ok,
            "sources": [src.name for src in s.sources], "now": _iso(now)}

    def metrics(self) -> tuple[bytes, str]:
        return self._generate(self.registry), self._content_type


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat(timespec="seconds") if t else None


def _handler(monitor: SchedulerMonitor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "citeline-scheduler"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/metrics":
                body, ctype = monitor.metrics()
                self._reply(200, body, ctype)
            elif path in ("/healthz", "/readyz"):
                code, doc = monitor.health()
                self._reply(code, json.dumps(doc).encode(), "application/json")
            else:
                self._reply(404, b'{"error": "not found: the scheduler serves /metrics and /healthz"}',
                            "application/json")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # no access log (paths are raw)
            return

    return Handler
