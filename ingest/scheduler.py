"""The sync scheduler: each source's cron expression decides when :meth:`Citeline.sync` runs it.

Promises (tested in tests/unit/test_scheduler.py and tests/integration/test_scheduler.py):

* a source's next run is the first time its ``schedule`` (a five-field cron expression or a macro such
  as ``@hourly``, evaluated in UTC) matches after its last run *started*: a slot missed while nothing
  was running fires once, not once per missed slot; a source never synced is due at once; a source
  without a schedule is left to ``citeline sync``;
* a failed run is retried after ``backoff_s``, doubling per failure up to ``max_backoff_s``, at most
  ``retries`` times per cron slot; the next regular time wins if it comes first; a run that was
  stopped (SIGTERM) is due again at once and resumes from its checkpoint;
* all of this is derived from ``sync_runs``, which the sync runner writes, so every scheduler process
  and ``citeline sources status`` agree, and a restarted scheduler carries on where the last one was;
* never two syncs of one source at once, across processes: the sync runner's advisory lock. A
  scheduler that finds it held skips the source (logged, and reported as :attr:`Outcome.LOCKED`) and
  looks again a tick later; just before running a source it re-reads its last run, so a source another
  process has synced meanwhile is not synced twice for one slot;
* due sources run one after another; a failing source is recorded and retried later and does not hold
  up the others (errors that leave no run row, such as an unreachable database, back off in memory);
* :meth:`Scheduler.stop` (the CLI wires SIGTERM and SIGINT to it) lets the batch in progress commit with
  its checkpoint and then returns; the run is recorded as ``interrupted`` and the next one resumes;
* other scheduled work (:class:`Job`: the ``[[principal_sources]]`` with a ``schedule``) runs in the same loop,
  after the due sources: due at start, then at each slot of its schedule; a failure is reported and it runs
  again at its next slot (its own lock and audit rows are the job's business, not ``sync_runs``);
* :attr:`Scheduler.last_pass`, :attr:`Scheduler.last_pass_ok` and :attr:`Scheduler.syncing` say whether the
  loop is alive: :mod:`citeline.ingest.scheduler_monitor` serves them as ``/healthz`` (and ``/metrics``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from croniter import croniter
from psycopg.rows import dict_row

from citeline.errors import ConfigError, SyncLockedError

if TYPE_CHECKING:
    import psycopg

    from citeline.db import Database
    from citeline.ingest.sync import SyncReport
    from citeline.settings import Settings, SourceSettings

__all__ = [
    "Job",
    "LastRun",
    "Outcome",
    "RetryPolicy",
    "RunResult",
    "Scheduler",
    "SyncHost",
    "check_schedule",
    "last_runs",
    "next_run",
]

log = logging.getLogger(__name__)

_MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


class SyncHost(Protocol):
    """What the scheduler needs from :class:`citeline.Citeline`."""

    settings: Settings

    @property
    def db(self) -> Database: ...

    def sync(self, source: str | None = None, *, stop: threading.Event | None = None) -> list[SyncReport]: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed run is retried: ``backoff_s`` × 2^(n-1) after the n-th failure, at most ``retries`` times."""

    retries: int = 3
    backoff_s: float = 30.0
    max_backoff_s: float = 900.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s <= 0 or self.max_backoff_s < self.backoff_s:
            raise ConfigError("retry policy: retries >= 0, backoff > 0 and max backoff >= backoff")

    def delay(self, failures: int) -> timedelta:
        """Wait after the ``failures``-th consecutive failure (1-based)."""
        exponent = min(max(failures, 1) - 1, 30)
        return timedelta(seconds=min(self.max_backoff_s, self.backoff_s * 2**exponent))


@dataclass(frozen=True)
class LastRun:
    """A source's latest run, and the start times of the failed runs right before it (newest first)."""

    run_id: int
    status: str  # running | succeeded | failed | interrupted (sync_runs.status)
    started_at: datetime
    finished_at: datetime | None
    failed_starts: tuple[datetime, ...] = ()  # trailing failed runs, this one included if it failed


class Outcome(Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped on request after a batch; resumes from its checkpoint
    LOCKED = "locked"  # another process is syncing the source: skipped


@dataclass(frozen=True)
class RunResult:
    source: str
    outcome: Outcome
    started: datetime
    report: SyncReport | None = None
    error: str | None = None
    next_run: datetime | None = None


@dataclass(frozen=True)
class Job:
    """Scheduled work beside the sources: ``run()`` does it and returns a one-line summary (it raises on failure).
    ``name`` is how results and logs name it (``principals:corp``)."""

    name: str
    schedule: str
    run: Callable[[], str]


def check_schedule(source: str, schedule: str) -> str:
    """The expression, stripped, if it is a five-field cron expression or a macro; else ConfigError."""
    expr = " ".join(schedule.split())
    if expr.lower() in _MACROS or (len(expr.split()) == 5 and croniter.is_valid(expr)):
        return expr
    raise ConfigError(f"source {source!r}: schedule {schedule!r} is not a cron expression; use five fields "
                      "(minute hour day-of-month month day-of-week, e.g. '*/30 * * * *', in UTC) or @hourly, "
                      "@daily, @weekly, @monthly")


def _after(expr: str, t: datetime) -> datetime:
    return croniter(expr, t.astimezone(UTC)).get_next(datetime)


def _slot_start(expr: str, t: datetime) -> datetime:
    """The latest time the expression matches at or before ``t``."""
    return croniter(expr, t.astimezone(UTC) + timedelta(microseconds=1)).get_prev(datetime)


def next_run(source: str, schedule: str | None, last: LastRun | None, now: datetime,
             retry: RetryPolicy = RetryPolicy()) -> datetime | None:
    """When the scheduler should next sync this source (``<= now``: due); None without a schedule."""
    if schedule is None:
        return None
    expr = check_schedule(source, schedule)
    if last is None:
        return now  # never synced: index it now rather than wait for the first slot
    regular = _after(expr, last.started_at)
    if last.status == "interrupted":
        return min(last.finished_at or last.started_at, regular)  # resume from the checkpoint
    if last.status == "failed":
        slot = _slot_start(expr, last.started_at)
        failures = sum(1 for started in last.failed_starts if started >= slot)
        if 1 <= failures <= retry.retries:
            return min((last.finished_at or last.started_at) + retry.delay(failures), regular)
    return regular


_LAST_RUNS = """
SELECT s.name, r.id AS run_id, r.status, r.started_at, r.finished_at,
       ARRAY(SELECT f.started_at FROM sync_runs f
             WHERE f.source_id = s.id AND f.status = 'failed'
               AND f.id > coalesce((SELECT max(o.id) FROM sync_runs o
                                    WHERE o.source_id = s.id AND o.status <> 'failed'), 0)
             ORDER BY f.id DESC LIMIT 64) AS failed_starts
FROM sources s
JOIN LATERAL (SELECT id, status, started_at, finished_at FROM sync_runs
              WHERE source_id = s.id ORDER BY id DESC LIMIT 1) r ON true
WHERE %(names)s::text[] IS NULL OR s.name = ANY(%(names)s::text[])
"""


def last_runs(conn: psycopg.Connection, names: Sequence[str] | None = None) -> dict[str, LastRun]:
    """Each source's latest run (sources that never ran are absent)."""
    rows = conn.cursor(row_factory=dict_row).execute(
        _LAST_RUNS, {"names": list(names) if names is not None else None}).fetchall()
    return {r["name"]: LastRun(r["run_id"], r["status"], r["started_at"], r["finished_at"], tuple(r["failed_starts"]))
            for r in rows}


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Runs the scheduled sources of one :class:`~citeline.Citeline` when they are due.

    ``run_pending()`` does one pass (``citeline scheduler --once``); ``serve()`` passes every
    ``tick_s`` seconds (sooner when a source falls due) until :meth:`stop`.
    """

    def __init__(self, host: SyncHost, *, retry: RetryPolicy = RetryPolicy(), tick_s: float = 30.0,
                 clock: Callable[[], datetime] = _utcnow, jobs: Sequence[Job] = ()) -> None:
        if tick_s <= 0:
            raise ConfigError("scheduler tick must be positive")
        self.host = host
        self.retry = retry
        self.tick = timedelta(seconds=tick_s)
        self.clock = clock
        self.sources = [s for s in host.settings.sources if s.schedule]
        self.jobs = list(jobs)
        for job in self.jobs:
            check_schedule(job.name, job.schedule)
        self._job_next = {job.name: clock() for job in self.jobs}  # due at start, then at each slot
        if not self.sources and not self.jobs:
            raise ConfigError("no source has a schedule: add e.g. schedule = \"*/30 * * * *\" to a [[sources]] "
                              "table in citeline.toml (cron, UTC)")
        for s in self.sources:
            check_schedule(s.name, s.schedule or "")
        self._stop = threading.Event()
        self.last_pass: datetime | None = None  # when the last pass ended (the health endpoint reads these)
        self.last_pass_ok = True
        self.syncing: str | None = None  # the source being synced now
        self._hold: dict[str, datetime] = {}  # not before: after a skip, or a failure that left no run row
        self._unrecorded: dict[str, int] = {}  # consecutive failures that left no run row

    # -- stopping ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the scheduler to stop: the batch in progress commits, then run/serve return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- planning ------------------------------------------------------------------------------------
    def plan(self, now: datetime | None = None) -> dict[str, datetime]:
        """Next run per scheduled source (a time at or before ``now`` means due)."""
        now = now or self.clock()
        with self.host.db.writer() as conn:
            last = last_runs(conn, [s.name for s in self.sources])
        return {**{s.name: self._when(s, last.get(s.name), now) for s in self.sources}, **self._job_next}

    def _when(self, source: SourceSettings, last: LastRun | None, now: datetime) -> datetime:
        when = next_run(source.name, source.schedule, last, now, self.retry)
        assert when is not None  # only scheduled sources are planned
        hold = self._hold.get(source.name)
        return max(when, hold) if hold is not None else when

    def _last(self, name: str) -> LastRun | None:
        with self.host.db.writer() as conn:
            return last_runs(conn, [name]).get(name)

    # -- running -------------------------------------------------------------------------------------
    def run_pending(self, on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
        """Sync every source that is due now, one after another; stop early if asked to."""
        plan = self.plan()
        now = self.clock()
        results = []
        for source in sorted(self.sources, key=lambda s: plan[s.name]):
            if self._stop.is_set():
                break
            if plan[source.name] > now:
                continue
            result = self._run(source)
            if result is not None:
                results.append(result)
                if on_result:
                    on_result(result)
        for job in self.jobs:
            if not self._stop.is_set() and self._job_next[job.name] <= now:
                results.append(self._run_job(job))
                if on_result:
                    on_result(results[-1])
        return results

    def _run_job(self, job: Job) -> RunResult:
        started = self.clock()
        self._job_next[job.name] = _after(check_schedule(job.name, job.schedule), started)
        try:
            summary = job.run()
        except Exception as exc:
            log.warning("%s: failed: %s; next attempt %s", job.name, exc, _fmt(self._job_next[job.name]))
            return RunResult(job.name, Outcome.FAILED, started, error=str(exc) or type(exc).__name__,
                             next_run=self._job_next[job.name])
        log.info("%s: %s; next %s", job.name, summary, _fmt(self._job_next[job.name]))
        return RunResult(job.name, Outcome.SUCCEEDED, started, next_run=self._job_next[job.name])

    def serve(self, on_result: Callable[[RunResult], None] | None = None) -> None:
        """Run due sources until :meth:`stop`; a failing pass (e.g. database down) is retried a tick later."""
        log.info("scheduler: %d scheduled source(s): %s", len(self.sources),
                 ", ".join(f"{s.name} ({s.schedule})" for s in self.sources))
        while not self._stop.is_set():
            wait = self.tick
            try:
                self.run_pending(on_result)
                if self._stop.is_set():
                    break
                now = self.clock()
                wait = min(self.tick, max(timedelta(0), min(self.plan(now).values()) - now))
                self.last_pass, self.last_pass_ok = now, True
            except Exception:
                self.last_pass, self.last_pass_ok = self.clock(), False
                log.exception("scheduler pass failed; trying again in %s", self.tick)
            self._stop.wait(max(wait.total_seconds(), 0.05))
        log.info("scheduler: stopped")

    def _run(self, source: SourceSettings) -> RunResult | None:
        last = self._last(source.name)  # another process may have synced it since the plan was made
        started = self.clock()
        if self._when(source, last, started) > started:
            return None
        log.info("source %s: sync starting", source.name)
        self.syncing = source.name
        try:
            report = self.host.sync(source.name, stop=self._stop)[0]
        except SyncLockedError:
            self._hold[source.name] = started + self.tick
            log.info("source %s: skipped, another process is syncing it", source.name)
            return RunResult(source.name, Outcome.LOCKED, started, next_run=self._hold[source.name])
        except Exception as exc:
            return self._failed(source, last, started, exc)
        finally:
            self.syncing = None
        self._hold.pop(source.name, None)
        self._unrecorded.pop(source.name, None)
        outcome = Outcome.SUCCEEDED if report.status == "succeeded" else Outcome.INTERRUPTED
        result = RunResult(source.name, outcome, started, report, next_run=self._next_after(source))
        log.info("source %s: %s (%d added, %d updated, %d unchanged, %d deleted, %d failed) in %.1f s; next %s",
                 source.name, outcome.value, report.added, report.updated, report.unchanged, report.deleted,
                 report.failed, report.seconds, _fmt(result.next_run))
        return result

    def _failed(self, source: SourceSettings, before: LastRun | None, started: datetime,
                exc: Exception) -> RunResult:
        error = str(exc) or type(exc).__name__
        try:
            after = self._last(source.name)
        except Exception:
            after = before
        if after is None or (before is not None and after.run_id == before.run_id):
            count = self._unrecorded.get(source.name, 0) + 1  # the failure left no run row
            self._unrecorded[source.name] = count
            self._hold[source.name] = started + self.retry.delay(count)
        result = RunResult(source.name, Outcome.FAILED, started, error=error, next_run=self._next_after(source))
        log.warning("source %s: sync failed: %s; next attempt %s", source.name, error, _fmt(result.next_run))
        return result

    def _next_after(self, source: SourceSettings) -> datetime | None:
        try:
            return self._when(source, self._last(source.name), self.clock())
        except Exception:
            return self._hold.get(source.name)


def _fmt(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "unknown"

