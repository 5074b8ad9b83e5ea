"""A namespace's lifecycle without opening it: which migrations are applied, pending or changed; dropping it.

Opening a :class:`~citeline.db.Database` applies the pending migrations (:mod:`citeline.db.migrations`);
the functions here only read (:func:`migration_status`) or drop a whole namespace (:func:`drop_namespace`),
on a plain connection, so that ``citeline db status`` changes nothing and ``citeline db drop-namespace``
works on a namespace that cannot be opened (another embedding dimension, an edited migration).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from importlib.abc import Traversable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from citeline.db.local import start_embedded
from citeline.db.migrations import available_migrations
from citeline.errors import DatabaseError
from citeline.settings import Settings

__all__ = ["MigrationState", "MigrationStatus", "database_url", "drop_namespace", "migration_status"]

# identifiers (the namespace) composed with psycopg.sql, values bound
_SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
_TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL AS present"
_APPLIED = sql.SQL("SELECT * FROM {}.schema_migrations ORDER BY version")  # * : checksum is absent before 0.2
_DROP = sql.SQL("DROP SCHEMA {} CASCADE")
_SYSTEM = ("public", "information_schema")


class MigrationState(enum.Enum):
    OK = "ok"                # applied, and the file is as it was (or was applied before checksums: adopted next)
    CHANGED = "changed"      # applied, but the file has been edited since
    PENDING = "pending"      # not applied yet: `citeline db migrate` (or any command that opens the index)
    UNKNOWN = "unknown"      # applied, but this citeline has no such file (a newer version applied it)


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    state: MigrationState


def database_url(settings: Settings) -> str:
    """The configured server's URL, or the embedded one's (started if needed), as :class:`Database` uses."""
    return settings.effective_database_url() or start_embedded(settings.home)


def _table(conn: psycopg.Connection, schema: str, table: str) -> bool:
    name = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)).as_string(conn)
    row = conn.cursor(row_factory=dict_row).execute(_TABLE_EXISTS, (name,)).fetchone()
    return bool(row and row["present"])


def migration_status(conn: psycopg.Connection, schema: str,
                     folder: Traversable | None = None) -> list[MigrationStatus]:
    """Every migration of namespace ``schema``, applied or not, in version order; reads only."""
    applied: dict[int, dict] = {}
    if _table(conn, schema, "schema_migrations"):
        rows = conn.cursor(row_factory=dict_row).execute(_APPLIED.format(sql.Identifier(schema)))
        applied = {row["version"]: row for row in rows}
    result = []
    files = available_migrations(folder)
    for mig in files:
        row = applied.get(mig.version)
        if row is None:
            result.append(MigrationStatus(mig.version, mig.name, None, MigrationState.PENDING))
            continue
        recorded = row.get("checksum")
        state = MigrationState.CHANGED if recorded not in (None, mig.checksum) else MigrationState.OK
        result.append(MigrationStatus(mig.version, mig.name, row["applied_at"], state))
    known = {mig.version for mig in files}
    for version, row in applied.items():
        if version not in known:
            result.append(MigrationStatus(version, row["name"], row["applied_at"], MigrationState.UNKNOWN))
    return sorted(result, key=lambda s: s.version)


def drop_namespace(conn: psycopg.Connection, schema: str) -> None:
    """Drop namespace ``schema`` and everything in it (its audit log too).

    Refused unless ``schema`` is a citeline namespace (it has a ``schema_migrations`` table): a typo or a
    hostile name cannot drop ``public``, a system schema or another application's schema. The name is always
    quoted as an identifier.
    """
    if schema in _SYSTEM or schema.startswith("pg_"):
        raise DatabaseError(f"{schema!r} is a system schema, not a citeline namespace; not dropped")
    if not conn.execute(_SCHEMA_EXISTS, (schema,)).fetchone():
        raise DatabaseError(f"there is no namespace {schema!r} in this database; nothing dropped")
    if not _table(conn, schema, "schema_migrations"):
        raise DatabaseError(f"schema {schema!r} is not a citeline namespace (it has no schema_migrations table); "
                            "not dropped")
    with conn.transaction():
        conn.execute(_DROP.format(sql.Identifier(schema)))
