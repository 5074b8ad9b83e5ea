"""Principal sources (``cl.principal_sources``): sync a ``[[principal_sources]]`` entry, audited.

:meth:`PrincipalSources.sync` builds the source (group ``citeline.principal_sources``), fetches its complete
listing *before* opening a transaction (a source that fails changes nothing), then in one transaction, under
the source's advisory lock: compares it with the principals the source manages, adds, updates and removes
them (a removal revokes the principal's keys) and appends one audit row. An unchanged listing writes nothing,
not even an audit row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from citeline import plugins
from citeline.access.audit import AuditLog
from citeline.access.principals import PrincipalStore
from citeline.contracts.principal_source import Listing, PrincipalSource
from citeline.db import Database
from citeline.errors import ConfigError, PrincipalError
from citeline.identity import directory
from citeline.identity.directory import Plan
from citeline.ingest.scheduler import Job
from citeline.operations.admin import audited
from citeline.principal_settings import PrincipalSourceSettings
from citeline.settings import Settings

__all__ = ["PRINCIPAL_SOURCES", "Plan", "PrincipalSources"]

PRINCIPAL_SOURCES = "citeline.principal_sources"


class PrincipalSources:
    """The configured principal sources: list them, build one, sync one (audited)."""

    def __init__(self, settings: Settings, db: Database, audit: Callable[[], AuditLog]) -> None:
        self._settings = settings
        self._db = db
        self._audit = audit
        self._store = PrincipalStore(db)

    def configured(self) -> list[PrincipalSourceSettings]:
        return list(self._settings.principal_sources)

    def entry(self, name: str) -> PrincipalSourceSettings:
        for s in self._settings.principal_sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self._settings.principal_sources) or "none configured"
        raise ConfigError(f"unknown principal source {name!r} (known: {known}); add a [[principal_sources]] "
                          "table to citeline.toml")

    def build(self, name: str) -> PrincipalSource:
        """The source ``name`` built from its ``[[principal_sources]]`` entry (config errors name the key)."""
        e = self.entry(name)
        source: PrincipalSource = plugins.create(
            PRINCIPAL_SOURCES, e.kind, e.config, section=f"principal_sources.{name}.config",
            resolve_path=self._settings.resolve_path, source=name, db=self._db)
        return source

    def jobs(self) -> list[Job]:
        """The entries with a ``schedule``, for ``citeline scheduler`` (each run audited as ``scheduler``)."""
        return [Job(f"principals:{e.name}", e.schedule, functools.partial(self._scheduled, e.name))
                for e in self._settings.principal_sources if e.schedule]

    def _scheduled(self, name: str) -> str:
        done = self.sync(name, actor="scheduler")
        return ("unchanged" if done.empty else f"{len(done.added)} added, {len(done.updated)} updated, "
                f"{len(done.removed)} removed ({len(done.revoked_keys)} keys revoked)")

    def sync(self, name: str, *, actor: str) -> Plan:
        """Reconcile the principals ``name`` manages with its listing now; what changed (empty: nothing)."""
        listing = self.build(name).fetch()  # outside the transaction: a failing source changes nothing
        if not isinstance(listing, Listing):
            raise PrincipalError(f"principal source {name!r} returned {type(listing).__name__}, not a Listing")
        if not listing.principals and self.entry(name).refuse_empty:
            with self._db.writer() as conn:
                held = len(directory.managed(conn, name))
            if held:  # a wrong base DN or filter reads as "everyone left": refused, not applied
                raise PrincipalError(f"principal source {name!r} listed no users; refusing to remove the {held} "
                                     "principals it manages (check its base DNs and filters, or set refuse_empty = "
                                     "false on the entry if the directory really is empty). Nothing was changed")
        return self.apply(name, listing, actor=actor, action="principal_source.sync")

    def apply(self, name: str, listing: Listing, *, actor: str, action: str,
              detail: dict[str, Any] | None = None) -> Plan:
        """Make the principals ``name`` manages match ``listing``, with one audit row if anything changed."""
        with audited(self._db, self._audit) as (conn, audit):
            directory.lock(conn, name)
            todo = directory.plan(conn, name, listing, adopt=self.entry(name).adopt)
            if todo.empty:
                return todo
            done = directory.apply(conn, name, todo, self._store)
            audit.append_in(conn, "admin", action, principal=actor,
                            payload={"source": name, **done.summary(), **(detail or {})})
        return done
