"""Sources: building each one's connector, their status, and the scheduler: :class:`Sources` (``cl.sources``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg.rows import dict_row

from citeline import plugins
from citeline.contracts.connector import Connector
from citeline.domain import Access
from citeline.errors import ConfigError
from citeline.ingest.scheduler import Job, RetryPolicy, Scheduler, SyncHost, last_runs, next_run
from citeline.settings import Settings, SourceSettings

__all__ = ["SourceStatus", "Sources", "build_connector"]

_COUNTS = ("added", "updated", "unchanged", "deleted", "failed")
# every indexed source with its document count and latest run (columns named as SourceStatus's fields)
_STATUS = (
    "SELECT s.name, s.connector, (SELECT count(*) FROM documents d WHERE d.source_id = s.id) AS documents,"
    " r.status AS last_run_status, r.started_at AS last_run_started, r.finished_at AS last_run_finished,"
    " s.last_success_at AS last_success, r.added, r.updated, r.unchanged, r.deleted, r.failed, r.error"
    " FROM sources s LEFT JOIN LATERAL (SELECT * FROM sync_runs WHERE source_id = s.id"
    " ORDER BY id DESC LIMIT 1) r ON true ORDER BY s.name")


@dataclass(frozen=True)
class SourceStatus:
    name: str
    connector: str
    documents: int
    last_run_status: str | None
    last_run_started: datetime | None
    last_run_finished: datetime | None
    last_success: datetime | None
    counts: dict[str, int]
    error: str | None
    schedule: str | None = None
    next_run: datetime | None = None  # from the cron schedule (and retry backoff); None: not scheduled


def build_connector(source: SourceSettings, settings: Settings) -> Connector:
    """Instantiate the source's connector with its typed config (relative paths resolved)."""
    cls = plugins.load(plugins.CONNECTORS, source.connector)
    try:
        config = cls.Config.model_validate(source.config)
    except ValueError as exc:
        raise ConfigError(f"invalid config for source {source.name!r} ({source.connector}):\n{exc}") from exc
    resolved = {name: settings.resolve_path(value) for name, value in config if isinstance(value, Path)}
    if resolved:
        config = config.model_copy(update=resolved)
    _check_allowed_roots(source, settings, resolved)
    try:
        default = Access.from_mapping(source.access)
    except ValueError as exc:
        raise ConfigError(f"invalid access for source {source.name!r}: {exc}") from exc
    return cls(config, default)


def _check_allowed_roots(source: SourceSettings, settings: Settings, paths: dict[str, Path]) -> None:
    """Refuse a source whose local paths (symlinks resolved) are under none of ``source_policy.allowed_roots``."""
    allowed = settings.source_policy.allowed_roots
    if allowed is None:
        return
    roots = [Path(os.path.realpath(settings.resolve_path(r))) for r in allowed]
    for field_name, path in paths.items():
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in roots):
            shown = f"{path}" if real == path else f"{path} (resolves to {real})"
            raise ConfigError(
                f"source {source.name!r}: config.{field_name} {shown} is outside every allowed root "
                f"({', '.join(map(str, roots)) or 'none'}) in source_policy.allowed_roots: move it under one "
                "of them, or ask an admin to add its folder to source_policy.allowed_roots")


class Sources:
    """The configured sources of one citeline (``host``: the facade, which syncs them)."""

    def __init__(self, host: SyncHost, *, jobs: Callable[[], Sequence[Job]] = tuple) -> None:
        self._host = host
        self._jobs = jobs  # scheduled work beside the sources: the principal sources with a schedule

    def retry_policy(self) -> RetryPolicy:
        """The ``[scheduler]`` settings' retry policy."""
        s = self._host.settings.scheduler
        return RetryPolicy(s.retries, s.backoff_s, s.max_backoff_s)

    def scheduler(self, *, retry: RetryPolicy | None = None, tick_s: float | None = None) -> Scheduler:
        """Runs the sources with a ``schedule`` when due (``citeline scheduler``); defaults from ``[scheduler]``."""
        return Scheduler(self._host, retry=retry or self.retry_policy(),
                         tick_s=self._host.settings.scheduler.tick_s if tick_s is None else tick_s, jobs=self._jobs())

    def status(self, *, retry: RetryPolicy | None = None) -> list[SourceStatus]:
        """Every configured or indexed source: last run, counts, error, and next scheduled run."""
        retry = retry or self.retry_policy()
        settings = self._host.settings
        with self._host.db.writer() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(_STATUS).fetchall()
            last = last_runs(conn)
        indexed = {r["name"] for r in rows}
        never = [{"name": s.name, "connector": s.connector, "documents": 0} for s in settings.sources
                 if s.name not in indexed]
        configured = {s.name: s for s in settings.sources}
        now = datetime.now(UTC)
        out = []
        for r in sorted([*rows, *never], key=lambda row: row["name"]):
            src = configured.get(r["name"])
            schedule = src.schedule if src else None
            out.append(SourceStatus(
                r["name"], r["connector"], r["documents"], r.get("last_run_status"), r.get("last_run_started"),
                r.get("last_run_finished"), r.get("last_success"), {k: r.get(k) or 0 for k in _COUNTS},
                r.get("error"), schedule, next_run(r["name"], schedule, last.get(r["name"]), now, retry)))
        return out
