"""The index's database lifecycle: :class:`DatabaseLifecycle` (``cl.database``), behind ``citeline db``.

``status`` reads a namespace's migrations (and which login reads them) without applying anything; ``migrate``
applies the configured namespace's pending ones as the admin login (and refuses an edited applied one), then
optionally ensures the least-privilege runtime login (:mod:`citeline.db.roles`); ``drop_namespace`` drops a
whole namespace, its audit log included: that drop cannot be audited in the log it removes, so it is logged
as a warning (the caller's own logs) instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from citeline.db.lifecycle import MigrationState, MigrationStatus, database_url, drop_namespace, migration_status
from citeline.db.migrations import apply_migrations, stored_dimension
from citeline.db.roles import LoginInfo, RuntimeLogin, ensure_runtime_login, login_info, validate_login_name
from citeline.errors import DatabaseError
from citeline.settings import Settings

__all__ = ["DatabaseLifecycle", "LoginInfo", "Migrated", "MigrationState", "MigrationStatus", "RuntimeLogin"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migrated:
    """What ``migrate`` did: the migrations applied now, and the runtime login's changes (None: none named)."""

    applied: list[MigrationStatus]
    runtime_login: RuntimeLogin | None = None


class DatabaseLifecycle:
    """Migrations' status, migrating, dropping a namespace (``namespace``: the configured one).

    ``dimension``: the configured embedder's (it loads the model), called only to create a new namespace."""

    def __init__(self, settings: Settings, namespace: str, dimension: Callable[[], int]) -> None:
        self._settings = settings
        self.namespace = namespace
        self._dimension = dimension

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

    def login(self, namespace: str | None = None) -> LoginInfo:
        """The login these commands run as (the embedded server's admin) and whether it may migrate the namespace."""
        with self._connect() as conn:
            return login_info(conn, namespace or self.namespace)

    def migrate(self, runtime_login: str | None = None,
                runtime_password: str | None = None) -> Migrated:
        """Apply the configured namespace's pending migrations (creating it if needed), whatever
        ``database.auto_migrate`` says; then, with ``runtime_login``, create that login where missing (with
        ``runtime_password``), set its password where one is given and grant it the runtime roles.

        Return the migrations applied and what was done to the login (never its password)."""
        if runtime_login is not None:
            validate_login_name(runtime_login)  # refused before anything is changed
        ts_config = self._settings.retrieval.text_search_config
        with self._connect() as conn:
            dimension = stored_dimension(conn, self.namespace)
            applied = set(apply_migrations(conn, self.namespace, dimension or self._dimension(), ts_config))
            login = (ensure_runtime_login(conn, runtime_login, runtime_password, self.namespace)
                     if runtime_login is not None else None)
            done = [s for s in migration_status(conn, self.namespace)
                    if s.version in applied and s.state is MigrationState.OK]
        if login is not None:
            log.info("runtime login %r: %s; roles %s", login.name, "created" if login.created else "exists",
                     ", ".join(login.roles))
        return Migrated(done, login)

    def drop_namespace(self, namespace: str) -> None:
        """Drop ``namespace`` and everything in it; refused for a schema that is not a citeline namespace."""
        with self._connect() as conn:
            drop_namespace(conn, namespace)
        log.warning("dropped citeline namespace %r (its documents, principals, keys and audit log)", namespace)
