"""The scheduler against the real embedded PostgreSQL: due runs, the cross-process lock, SIGTERM, retries.

Sources use the ``test-generated`` connector (tests/support/scheduler_connectors.py), registered through
a real entry point in tests/support/plugins; ``citeline scheduler`` runs as a real subprocess where
processes or signals are what is tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from citeline.facade import Citeline
from citeline.ingest.scheduler import Outcome, RetryPolicy
from citeline.ingest.sync import STOPPED, SyncRunner
from citeline.settings import Settings
from tests.conftest import REPO
from tests.support.connectors import ListConnector, doc
from tests.support.scheduler_connectors import PLUGINS

pytestmark = pytest.mark.integration

NEVER = "0 0 1 1 *"  # once a year: due only because a source never ran, or for a retry


@dataclass
class Site:
    """A citeline.toml with test sources, its own namespace, and an in-process Citeline on it."""

    root: Path
    config: Path
    namespace: str
    pg_url: str
    cl: Citeline

    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(PLUGINS), str(REPO), *sys.path])
        return {**os.environ, "PYTHONPATH": path, "CITELINE_CONFIG": str(self.config),
                "CITELINE_DATABASE_URL": self.pg_url, "CITELINE_DATABASE__NAMESPACE": self.namespace,
                "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def scheduler(self, *args: str, log: Path | None = None) -> subprocess.Popen:
        out = (log or self.root / f"scheduler-{uuid.uuid4().hex[:6]}.log").open("w")
        return subprocess.Popen([sys.executable, "-c", "from citeline.cli import main; main()", "scheduler", *args],
                                env=self.env(), stdout=subprocess.PIPE, stderr=out, start_new_session=True,
                                text=True)

    def runs(self, source: str) -> list[dict]:
        with self.cl.db.writer() as conn:
            cur = conn.execute(
                "SELECT r.status, r.started_at, r.finished_at, r.added, r.error, r.resumed_from FROM sync_runs r"
                " JOIN sources s ON s.id = r.source_id WHERE s.name = %s ORDER BY r.id", (source,))
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def scalar(self, query: str, *args: object) -> object:
        with self.cl.db.writer() as conn:
            return conn.execute(query, args or None).fetchone()[0]  # type: ignore[index]


def _toml(sources: list[dict]) -> str:
    lines = ['home = ".citeline"']
    for s in sources:
        lines.append("\n[[sources]]")
        for key, value in s.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_site(tmp_path, pg_url, embedder, monkeypatch) -> Iterator:
    monkeypatch.syspath_prepend(str(PLUGINS))  # the test-generated connector's entry point
    made: list[Site] = []

    def make(sources: list[dict]) -> Site:
        config = tmp_path / "citeline.toml"
        config.write_text(_toml(sources))
        namespace = f"sch_{uuid.uuid4().hex[:10]}"
        settings = Settings.load(config, database_url=pg_url, database={"namespace": namespace})
        site = Site(tmp_path, config, namespace, pg_url, Citeline(settings, embedder=embedder))
        site.cl.db  # create the namespace before any subprocess starts  # noqa: B018
        made.append(site)
        return site

    yield make
    for site in made:
        site.cl.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(site.namespace)))


def generated(name: str, schedule: str | None = NEVER, **config: object) -> dict:
    source: dict = {"name": name, "connector": "test-generated", "config": {"count": 3, **config}}
    if schedule is not None:
        source["schedule"] = schedule
    return source


def test_a_due_source_runs_and_others_do_not(make_site):
    site = make_site([generated("fresh"), generated("recent"), generated("manual", schedule=None)])
    site.cl.sync("recent")  # ran just now: its next slot is next new year
    sched = site.cl.sources.scheduler()
    assert [r.source for r in sched.run_pending()] == ["fresh"]
    assert [len(site.runs(s)) for s in ("fresh", "recent", "manual")] == [1, 1, 0]
    assert site.runs("fresh")[0]["status"] == "succeeded"
    assert sched.run_pending() == []  # nothing is due any more
    status = {s.name: s for s in site.cl.sources.status()}
    next_new_year = datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
    assert status["fresh"].next_run == status["recent"].next_run == next_new_year
    assert status["fresh"].last_run_status == "succeeded" and status["fresh"].documents == 3
    assert status["manual"].next_run is None and status["manual"].last_run_status is None  # configured, never run


def test_sources_status_shows_next_run_as_a_table_and_json(make_site, monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    from citeline.cli import app, sources

    monkeypatch.setattr(sources, "console", Console(width=250))

    site = make_site([generated("wiki", schedule="*/30 * * * *"), generated("manual", schedule=None)])
    site.cl.sync("wiki")
    for key, value in site.env().items():
        if key.startswith("CITELINE_"):
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["sources", "status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "next run" in result.output and "manual (no schedule)" in result.output
    result = CliRunner().invoke(app, ["sources", "status", "--json"], catch_exceptions=False)
    rows = {r["name"]: r for r in json.loads(result.output)}
    nxt = datetime.fromisoformat(rows["wiki"]["next_run"])
    assert nxt.minute in (0, 30) and nxt > datetime.now(UTC)
    assert rows["wiki"]["counts"]["added"] == 3 and rows["wiki"]["schedule"] == "*/30 * * * *"
    assert rows["manual"]["next_run"] is None and rows["manual"]["last_run_status"] is None


def test_the_runner_stops_between_batches_and_the_next_run_resumes(db, embedder, chunker):
    stop = threading.Event()

    class StopMidway(ListConnector):
        def sync(self, cursor):
            for change in super().sync(cursor):
                if self.yielded[-1] == "d7":
                    stop.set()  # SIGTERM arrives while the second batch (d5..d9) is being read
                yield change

    runner = SyncRunner(db, embedder, chunker, batch_size=5, stop=stop)
    docs = [doc(f"d{i}", f"# Page {i}\n\nTopic {i}.") for i in range(20)]
    report = runner.run("wiki", "list", StopMidway(docs, every=5))
    assert report.status == "interrupted" and report.added == 10  # that batch is finished, no more
    with db.writer() as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 10
        assert conn.execute("SELECT cursor FROM sources").fetchone()[0] == {"pos": 5}
        status, error = conn.execute("SELECT status, error FROM sync_runs").fetchone()
        assert (status, error) == ("interrupted", STOPPED)
    connector = ListConnector(docs, every=5)
    again = SyncRunner(db, embedder, chunker, batch_size=5).run("wiki", "list", connector)
    assert again.status == "succeeded" and again.resumed_from is not None
    assert connector.yielded[0] != "d0"  # resumed, not restarted
    with db.writer() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT external_id) FROM documents").fetchone() == (20, 20)


def test_a_failing_source_is_retried_with_backoff_and_does_not_block_the_others(make_site, tmp_path):
    markers = {name: tmp_path / f"{name}.down" for name in ("dead", "flaky")}  # the source fails while it exists
    sources = []
    for name, marker in markers.items():
        marker.touch()
        sources.append(generated(name, fail_while=str(marker)))
    sources.append(generated("up"))
    site = make_site(sources)
    policy = RetryPolicy(retries=2, backoff_s=0.5, max_backoff_s=1.0)
    sched = site.cl.sources.scheduler(retry=policy, tick_s=0.1)
    results = []
    thread = threading.Thread(target=sched.serve, kwargs={"on_result": results.append})
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while [r["status"] for r in site.runs("flaky")] != ["failed", "failed"] and time.monotonic() < deadline:
            time.sleep(0.05)
        markers["flaky"].unlink()  # the source comes back during the 1 s before its last retry
        while (len(site.runs("dead")) < 3 or not any(r["status"] == "succeeded" for r in site.runs("flaky"))) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)  # long enough for a fourth attempt, if retries were not bounded
    finally:
        sched.stop()
        thread.join(30)
        for marker in markers.values():
            marker.unlink(missing_ok=True)
    assert not thread.is_alive()
    dead, flaky, up = site.runs("dead"), site.runs("flaky"), site.runs("up")
    assert [r["status"] for r in dead] == ["failed"] * 3  # the first attempt and two retries, no more
    assert [r["status"] for r in flaky] == ["failed", "failed", "succeeded"]
    assert [r["status"] for r in up] == ["succeeded"]
    assert "source is down" in dead[0]["error"]
    for runs in (dead, flaky):
        gaps = [(b["started_at"] - a["finished_at"]).total_seconds() for a, b in zip(runs, runs[1:])]
        assert gaps[0] >= 0.5 - 0.05 and gaps[1] >= 1.0 - 0.05, gaps  # exponential backoff
    assert up[0]["started_at"] < dead[1]["started_at"]  # the failing source did not hold the others up
    assert {(r.source, r.outcome) for r in results} == {
        ("dead", Outcome.FAILED), ("flaky", Outcome.FAILED), ("flaky", Outcome.SUCCEEDED), ("up", Outcome.SUCCEEDED)}
    status = {s.name: s for s in site.cl.sources.status(retry=policy)}
    assert status["dead"].next_run == datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)  # retries spent
    assert status["dead"].error and "source is down" in status["dead"].error


@pytest.mark.slow
def test_two_scheduler_processes_never_sync_one_source_at_once(make_site):
    slow = {"count": 24, "delay_s": 0.1, "every": 4}
    site = make_site([{**generated("a", **slow), "batch_size": 4}, {**generated("b", **slow), "batch_size": 4}])
    procs = [site.scheduler("--once", "--json") for _ in range(2)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
        outputs.append(json.loads(out))
    outcomes = [(r["source"], r["outcome"]) for results in outputs for r in results]
    for source in ("a", "b"):
        runs = site.runs(source)
        assert [r["status"] for r in runs] == ["succeeded"], runs  # exactly one run per source
        assert runs[0]["added"] == 24
        assert outcomes.count((source, "succeeded")) == 1
    assert all(outcome in ("succeeded", "locked") for _, outcome in outcomes), outcomes


@pytest.mark.slow
def test_sigterm_stops_after_the_current_batch_and_the_next_run_resumes(make_site):
    site = make_site([{**generated("slow", count=40, delay_s=0.15, every=5), "batch_size": 5}])
    log = site.root / "sigterm.log"
    proc = site.scheduler("--tick", "1", log=log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            if site.scalar("SELECT coalesce(max(added), 0) FROM sync_runs") >= 10:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"scheduler made no progress:\n{log.read_text()}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()
    assert "SIGTERM: stopping after the current batch" in log.read_text()
    [run] = site.runs("slow")
    assert (run["status"], run["error"]) == ("interrupted", STOPPED)
    committed = site.scalar("SELECT count(*) FROM documents")
    assert committed == run["added"] and 10 <= committed < 40 and committed % 5 == 0  # whole batches only
    cursor = site.scalar("SELECT cursor FROM sources WHERE name = 'slow'")
    assert cursor and cursor["pos"] >= 5  # a checkpoint to resume from

    results = site.cl.sources.scheduler().run_pending()  # an interrupted run is due at once
    assert [(r.source, r.outcome) for r in results] == [("slow", Outcome.SUCCEEDED)]
    assert results[0].report.resumed_from == cursor
    assert site.scalar("SELECT count(*) FROM documents") == 40
    assert site.scalar("SELECT count(DISTINCT document_id) FROM chunks") == 40
    assert [r["status"] for r in site.runs("slow")] == ["interrupted", "succeeded"]
