"""Sync now, in the background: :class:`SyncJobs` (``cl.sync_jobs``), what the admin API's sync button calls.

:meth:`SyncJobs.start` checks the source (its connector is built, so a bad config fails at once), writes the
request's audit row (fail closed: no row, no sync), starts the sync on a background thread and returns the
run's id as soon as the runner has recorded its ``sync_runs`` row. A source already being synced (the
runner's advisory lock) is refused with :class:`~citeline.errors.SyncLockedError`. :meth:`SyncJobs.run`
reads a run's status, counts and failures back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from psycopg.rows import dict_row

from citeline.access.audit import AuditLog
from citeline.db import Database
from citeline.errors import CitelineError
from citeline.ingest.sync import SyncReport
from citeline.operations.sources import build_connector
from citeline.settings import Settings

__all__ = ["RunStatus", "SyncJobs"]

log = logging.getLogger(__name__)

_LAST_RUN_ID = "SELECT coalesce(max(id), 0) AS id FROM sync_runs"
_NEW_RUN = ("SELECT r.id FROM sync_runs r JOIN sources s ON s.id = r.source_id WHERE s.name = %s AND r.id > %s"
            " ORDER BY r.id LIMIT 1")
_RUN = ("SELECT r.id AS run_id, s.name AS source, r.status, r.started_at, r.finished_at, r.added, r.updated,"
        " r.unchanged, r.deleted, r.failed, r.chunks, r.error FROM sync_runs r JOIN sources s ON s.id = r.source_id"
        " WHERE r.id = %s")
_LATEST = ("SELECT DISTINCT ON (s.name) s.name, r.id FROM sync_runs r JOIN sources s ON s.id = r.source_id"
           " ORDER BY s.name, r.id DESC")
_FAILURES = "SELECT external_id, reason, at FROM sync_failures WHERE run_id = %s ORDER BY id LIMIT %s"


class SyncHost(Protocol):
    """What a background sync needs from :class:`citeline.Citeline`."""

    settings: Settings

    @property
    def db(self) -> Database: ...

    def sync(self, source: str | None = None, *, full: bool = False) -> list[SyncReport]: ...


@dataclass(frozen=True)
class RunStatus:
    run_id: int
    source: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    added: int
    updated: int
    unchanged: int
    deleted: int
    failed: int
    chunks: int
    error: str | None
    failures: list[dict[str, Any]]  # the first failed documents: external_id, reason, at


class SyncJobs:
    """Background syncs started by an admin, each audited before it starts."""

    def __init__(self, host: SyncHost, audit: Callable[[], AuditLog], *, start_timeout_s: float = 120.0) -> None:
        self._host = host
        self._audit = audit
        self._start_timeout_s = start_timeout_s

    def start(self, source: str, *, actor: str, full: bool = False) -> int:
        """Start syncing ``source`` in the background; its run id once the run is recorded."""
        settings = self._host.settings
        build_connector(settings.source(source), settings)  # unknown source or bad config: ConfigError, now
        with self._host.db.writer() as conn:
            last = conn.cursor(row_factory=dict_row).execute(_LAST_RUN_ID).fetchone()
        before = int(last["id"]) if last else 0
        self._audit().append("admin", "source.sync", principal=actor, payload={"source": source, "full": full})
        failed: list[BaseException] = []
        thread = threading.Thread(target=self._sync, args=(source, full, failed), name=f"sync-{source}", daemon=True)
        thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            alive = thread.is_alive()  # before the look-up: a run recorded just before the thread ended is found
            with self._host.db.writer() as conn:
                row = conn.cursor(row_factory=dict_row).execute(_NEW_RUN, (source, before)).fetchone()
            if row is not None:
                return int(row["id"])
            if not alive:
                if failed and isinstance(failed[0], CitelineError):
                    raise failed[0]
                raise CitelineError(f"source {source!r}: the sync ended before it recorded a run"
                                    + (f" ({failed[0]})" if failed else ""))
            time.sleep(0.05)
        raise CitelineError(f"source {source!r}: the sync did not start within {self._start_timeout_s:.0f} s; "
                            "`citeline sources status` shows whether it is running")

    def _sync(self, source: str, full: bool, failed: list[BaseException]) -> None:
        try:
            self._host.sync(source, full=full)
        except BaseException as exc:  # reported to start(); the run row (if any) records it too
            failed.append(exc)
            log.warning("background sync of %s failed: %s", source, exc)

    def run(self, run_id: int, *, failures: int = 20) -> RunStatus | None:
        """A run's status, counts, error and its first ``failures`` failed documents (None: no such run)."""
        with self._host.db.writer() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(_RUN, (run_id,)).fetchone()
            if row is None:
                return None
            fails = cur.execute(_FAILURES, (run_id, failures)).fetchall()
        return RunStatus(**row, failures=[dict(f) for f in fails])

    def latest_ids(self) -> dict[str, int]:
        """Each indexed source's latest run id (for :meth:`run`: its failures)."""
        with self._host.db.writer() as conn:
            return {r["name"]: int(r["id"]) for r in conn.cursor(row_factory=dict_row).execute(_LATEST).fetchall()}
