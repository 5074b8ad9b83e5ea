"""The index's database lifecycle: :class:`DatabaseLifecycle` (``cl.database``), behind ``citeline db``.

``status`` reads a namespace's migrations without applying anything; ``migrate`` opens the configured
namespace, which applies the pending ones (and refuses an edited applied one); ``drop_namespace`` drops a
whole namespace, its audit log included: that drop cannot be audited in the log it removes, so it is logged
as a warning (the caller's own logs) instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import psycopg

from citeline.db import Database
from citeline.db.lifecycle import MigrationState, MigrationStatus, database_url, drop_namespace, migration_status
from citeline.errors import DatabaseError
from citeline.settings import Settings

__all__ = ["DatabaseLifecycle", "MigrationState", "MigrationStatus"]

log = logging.getLogger(__name__)


class DatabaseLifecycle:
    """Migrations' status, migrating, dropping a namespace (``namespace``: the configured one)."""

    def __init__(self, settings: Settings, namespace: str, db: Callable[[], Database]) -> None:
        self._settings = settings
        self.namespace = namespace
        self._db = db

    @contextlib.contextmanager
    def _connect(self) -> Iterator[psycopg.Connection]:
        url = database_url(self._settings)
        try:
            conn = psycopg.connect(url, autocommit=True,
                                   connect_timeout=int(self._settings.database.connect_timeout_s))
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cannot connect to PostgreSQL: {exc}; check CITELINE_DATABASE_URL "
                                "or unset it to use the embedded server") from exc
        with conn:
            yield conn

    def status(self, namespace: str | None = None) -> list[MigrationStatus]:
        """Every migration of the namespace (default: the configured one): ok, changed, pending or unknown."""
        with self._connect() as conn:
            return migration_status(conn, namespace or self.namespace)

    def migrate(self) -> list[MigrationStatus]:
        """Apply the configured namespace's pending migrations (creating it if needed); return those applied."""
        applied = set(self._db().applied_migrations)
        return [s for s in self.status() if s.version in applied and s.state is MigrationState.OK]

    def drop_namespace(self, namespace: str) -> None:
        """Drop ``namespace`` and everything in it; refused for a schema that is not a citeline namespace."""
        with self._connect() as conn:
            drop_namespace(conn, namespace)
        log.warning("dropped citeline namespace %r (its documents, principals, keys and audit log)", namespace)
