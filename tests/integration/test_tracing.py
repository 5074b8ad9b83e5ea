"""Traces, request ids and JSON logs through the real app (FastAPI in process, the real embedded PostgreSQL,
the real embedder, the extractive backend, the real verifier and audit chain), and the scheduler's listener.

Spans are read with the OpenTelemetry SDK's in-memory exporter (:mod:`tests.support.spans`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from citeline.domain import Principal
from citeline.facade import Citeline
from citeline.serving.app import create_app
from citeline.settings import Settings
from citeline.workflows import SchedulerMonitor
from tests.support.spans import by_name, json_log_lines, one, span_exporter

pytestmark = pytest.mark.integration

QUESTION = "How long is the warranty on the vacuum gripper?"
STAGES = ["auth", "retrieve", "generate", "verify", "audit"]


@pytest.fixture(scope="module")
def wiki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wiki")
    (root / "gripper.md").write_text("# Vacuum gripper\n\nThe vacuum gripper has a warranty of two years. "
                                     "Returns are accepted within thirty days of delivery.\n")
    (root / "deploy.md").write_text("# Deploys\n\nRoll back a deploy with `kubectl rollout undo deploy/api`.\n")
    return root


@pytest.fixture
def cl(pg_url: str, embedder, wiki: Path, tmp_path: Path) -> Iterator[Citeline]:
    config = tmp_path / "citeline.toml"
    config.write_text(f'home = "{tmp_path / "home"}"\n\n[[sources]]\nname = "wiki"\nconnector = "folder"\n'
                      f'config = {{ path = "{wiki}" }}\naccess = {{ public = true }}\nschedule = "@hourly"\n')
    namespace = f"tr_{uuid.uuid4().hex[:10]}"
    settings = Settings.load(config, database_url=pg_url, database={"namespace": namespace},
                             generation={"backend": "extractive"}, answer={"min_score": -1.0})
    try:
        with Citeline(settings, embedder=embedder) as c:
            yield c
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(namespace)))


@pytest.fixture
def client_key(cl: Citeline) -> Iterator[tuple[TestClient, str]]:
    cl.sync()
    cl.admin.add_principal(Principal("alice", ("staff",)), actor="test")
    key = cl.admin.create_key("alice", actor="test").secret
    with TestClient(create_app(cl)) as client:
        yield client, key


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    with json_log_lines() as stream:
        yield stream


def _answer_rows(cl: Citeline) -> list[Any]:
    return [r for r in cl.audit.records(kind="ask") if r.action == "answer"]


def test_an_ask_traces_every_stage_under_one_trace_with_the_request_id_the_audit_row_and_logs(
        cl, client_key, json_log):
    client, key = client_key
    exporter = span_exporter()
    reply = client.post("/v1/ask", json={"question": QUESTION},
                        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "req-42.abc"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Request-ID"] == "req-42.abc"
    spans = exporter.get_finished_spans()
    root = one(spans, "POST /v1/ask")
    stages = [one(spans, name) for name in STAGES]
    assert {s.context.trace_id for s in [root, *stages, one(spans, "answer")]} == {root.context.trace_id}
    assert root.parent is None and root.attributes["http.response.status_code"] == 200
    assert [s.name for s in sorted(stages, key=lambda s: s.start_time)] == STAGES  # in this order
    for s in [root, *stages]:
        assert s.attributes["citeline.request_id"] == "req-42.abc", s.name
        assert s.end_time > s.start_time, s.name  # timed
    auth, retrieve, generate, _verify, audit = stages
    assert auth.parent.span_id == root.context.span_id and auth.attributes["citeline.key_id"]
    assert retrieve.attributes["citeline.hits"] >= 1 and retrieve.attributes["citeline.embed_ms"] > 0
    assert retrieve.attributes["citeline.sql_ms"] > 0
    assert generate.attributes["citeline.backend"] == "extractive"
    answer = one(spans, "answer")
    assert answer.attributes["citeline.audit_id"] == reply.json()["audit_id"]
    assert audit.parent.span_id == answer.context.span_id
    # the audit row carries the same id, hashed into the chain like the rest of its payload
    row = _answer_rows(cl)[-1]
    assert row.id == reply.json()["audit_id"] and row.payload["request_id"] == "req-42.abc"
    assert cl.audit.verify().ok
    # JSON log lines parse and carry the id and the principal (never the key)
    lines = [json.loads(x) for x in json_log.getvalue().splitlines()]
    request_lines = [x for x in lines if x["logger"] == "citeline.serving.requests"]
    assert request_lines and request_lines[-1]["request_id"] == "req-42.abc"
    assert request_lines[-1]["principal"] == "alice" and request_lines[-1]["message"].startswith("POST /v1/ask 200")
    assert key not in json_log.getvalue() and key.split("_")[-1] not in json_log.getvalue()


def test_without_a_request_id_one_is_made_and_streams_trace_too(cl, client_key):
    client, key = client_key
    exporter = span_exporter()
    with client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True},
                       headers={"Authorization": f"Bearer {key}"}) as reply:
        body = "".join(reply.iter_text())
    rid = reply.headers["X-Request-ID"]
    assert len(rid) == 32 and "event: done" in body
    spans = exporter.get_finished_spans()
    root = one(spans, "POST /v1/ask")
    names = {s.name for s in spans if s.context.trace_id == root.context.trace_id}
    assert {"auth", "answer", "retrieve", "generate", "audit"} <= names
    ours = [s for s in spans if s.instrumentation_scope.name == "citeline"]  # FastAPI's own spans aside
    assert root.attributes["citeline.request_id"] == rid
    assert all(s.attributes["citeline.request_id"] == rid and s.context.trace_id == root.context.trace_id for s in ours)
    rows = list(cl.audit.records(kind="ask"))
    assert [r.action for r in rows[-2:]] == ["answer", "answer.end"]  # the opening and closing rows
    assert {r.payload["request_id"] for r in rows[-2:]} == {rid}


def _asgi_get(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str]]:
    """One request straight through the ASGI app: headers an HTTP client library would refuse to send."""
    out: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message["headers"]}

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    return out["status"], out["headers"]


@pytest.mark.parametrize("hostile", [b"x" * 100_000, b"abc\nX-Injected: yes", "café-ид".encode(),
                                     b"a\r\nSet-Cookie: s=1", b"' OR 1=1 --"])
def test_a_hostile_request_id_is_replaced_and_never_logged(cl, client_key, json_log, caplog, hostile):
    client, key = client_key
    caplog.set_level(logging.DEBUG)
    exporter = span_exporter()
    status, headers = _asgi_get(client.app, "/v1/models", [(b"authorization", f"Bearer {key}".encode()),
                                                           (b"x-request-id", hostile)])
    assert status == 200
    rid = headers["x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0 and rid.encode() != hostile
    raw = hostile.decode("latin-1")
    logged = json_log.getvalue() + "\n".join(r.getMessage() for r in caplog.records)
    assert raw not in logged and "X-Injected" not in logged and "Set-Cookie" not in logged
    assert "request_id" in json_log.getvalue() and rid in json_log.getvalue()
    for s in exporter.get_finished_spans():
        assert raw not in json.dumps(dict(s.attributes or {}), default=str), s.name


def test_a_sync_run_produces_its_span_tree(cl):
    exporter = span_exporter()
    (report,) = cl.sync()
    spans = exporter.get_finished_spans()
    run = one(spans, "sync")
    assert run.parent is None and run.attributes["citeline.source"] == "wiki"
    assert run.attributes["citeline.status"] == "succeeded" and run.attributes["citeline.added"] == report.added == 2
    assert run.attributes["citeline.run_id"] == report.run_id and run.attributes["citeline.chunks"] >= 2
    for name in ("sync.chunk", "sync.embed", "sync.write"):
        (stage, *_more) = by_name(spans, name)
        assert stage.parent.span_id == run.context.span_id and stage.context.trace_id == run.context.trace_id, name
        assert run.start_time <= stage.start_time <= stage.end_time <= run.end_time, name
    assert sum(s.attributes["citeline.added"] for s in by_name(spans, "sync.write")) == 2  # written on another thread
    assert sum(s.attributes["citeline.texts"] for s in by_name(spans, "sync.embed")) == report.chunks


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_the_scheduler_serves_metrics_and_health(cl):
    sched = cl.sources.scheduler(tick_s=0.2)
    monitor = SchedulerMonitor(sched, port=0)
    with monitor:
        base = "http://{}:{}".format(*monitor.address)
        thread = threading.Thread(target=sched.serve, kwargs={"on_result": monitor.observe}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 120
            while sched.last_pass is None and time.monotonic() < deadline:
                time.sleep(0.1)
            code, ctype, body = _get(base + "/healthz")
            health = json.loads(body)
            assert code == 200 and ctype == "application/json" and health["status"] == "ok", body
            assert health["last_pass_ok"] is True and health["sources"] == ["wiki"]
            code, ctype, metrics = _get(base + "/metrics")
            assert code == 200 and ctype.startswith("text/plain")
            assert 'citeline_scheduler_runs_total{outcome="succeeded",source="wiki"} 1.0' in metrics
            assert 'citeline_scheduler_documents_total{change="added",source="wiki"} 2.0' in metrics
            assert "citeline_scheduler_syncing 0.0" in metrics
            assert _get(base + "/anything")[0] == 404
        finally:
            sched.stop()
            thread.join(timeout=30)
        code, _, body = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["status"] == "stopping"


def test_an_admin_change_through_the_api_carries_the_request_id_in_its_audit_row(cl, client_key, json_log):
    client, _ = client_key
    cl.admin.add_principal(Principal("ops", ("staff",)), actor="test")
    admin = cl.admin.create_key("ops", actor="test", admin=True).secret
    r = client.post("/v1/admin/keys", json={"user": "alice", "label": "ci"},
                    headers={"Authorization": f"Bearer {admin}", "X-Request-ID": "admin-req-7"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "admin-req-7"
    row = list(cl.audit.records())[-1]
    assert row.payload.get("request_id") == "admin-req-7" and row.kind != "ask"
    assert cl.audit.verify().ok
    assert r.json()["key"] not in json_log.getvalue() and admin not in json_log.getvalue()  # no secret logged
