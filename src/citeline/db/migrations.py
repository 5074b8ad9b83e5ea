"""Versioned schema migrations: ``migrations/NNNN_name.sql`` applied in order, once, per namespace.

Each namespace (a Postgres schema) has its own ``schema_migrations`` table. Migrations run under an
advisory lock so that several processes starting at once apply each file exactly once. Each applied
version records its file's sha256: an applied file edited since is refused (:class:`MigrationChecksumError`);
versions applied before checksums were recorded adopt the current file's on the next run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from citeline.errors import DatabaseError, MigrationChecksumError, SchemaMismatchError

__all__ = ["ROLES", "Migration", "apply_migrations", "available_migrations", "dimension_mismatch", "ensure_roles",
           "may_not_migrate", "migrations_needed", "stored_dimension", "verify_checksums"]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIGRATION_LOCK = 0x63697465  # "cite"

# reader: queries on behalf of principals (row-level security); writer: ingest and admin work;
# auditor: reads the audit log (the reader may not). All three are NOLOGIN and granted to the login that
# runs the migrations (the application's); an operator may grant citeline_auditor to an audit login.
ROLES = ("citeline_reader", "citeline_writer", "citeline_auditor")

# The migration runner's own SQL (the schema itself is in migrations/*.sql); values are bound parameters,
# identifiers (role, schema) are composed with psycopg.sql.
_ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %s"
_CREATE_ROLE = sql.SQL("CREATE ROLE {} NOLOGIN NOBYPASSRLS")
_IS_MEMBER = "SELECT pg_has_role(current_user, %s, 'SET') AS member"
_GRANT_ROLE = sql.SQL("GRANT {} TO CURRENT_USER")
_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_CREATE_VECTOR = "CREATE EXTENSION IF NOT EXISTS vector"
_CREATE_SCHEMA = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
_GRANT_SCHEMA = sql.SQL("GRANT USAGE ON SCHEMA {} TO citeline_reader, citeline_writer, citeline_auditor")
_SEARCH_PATH = sql.SQL("SET LOCAL search_path TO {}, public")
_CREATE_VERSIONS = ("CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
_ADD_CHECKSUM = "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text"  # sha256 of the file
_VERSIONS = "SELECT version, checksum FROM schema_migrations"
_RECORD_VERSION = "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
_ADOPT_CHECKSUM = "UPDATE schema_migrations SET checksum = %s WHERE version = %s AND checksum IS NULL"
_STORED_DIM = "SELECT value FROM index_meta WHERE key = 'embedding_dim'"
_HAS_META = "SELECT to_regclass(%s) IS NOT NULL AS present"
_STORED_DIM_OF = sql.SQL("SELECT value FROM {}.index_meta WHERE key = 'embedding_dim'")
_VERSIONS_OF = sql.SQL("SELECT * FROM {}.schema_migrations")  # * : checksum is absent before 0.2


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        """sha256 of the file's text as shipped (before the placeholders are filled in)."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def available_migrations(folder: Traversable | None = None) -> list[Migration]:
    """The migration files in ``folder`` (default: the package's ``migrations/``), in version order."""
    found = []
    for entry in (folder or resources.files("citeline.db").joinpath("migrations")).iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def verify_checksums(recorded: dict[int, str | None], migrations: list[Migration], schema: str) -> None:
    """Refuse applied versions whose file changed since (``recorded``: version → checksum, None if unrecorded)."""
    for mig in migrations:
        stored = recorded.get(mig.version)
        if stored is not None and stored != mig.checksum:
            raise MigrationChecksumError(
                f"migration {mig.filename} was applied to namespace {schema!r} but the file has changed since "
                f"(sha256 {stored[:12]}… recorded, {mig.checksum[:12]}… now); migrations are append-only: "
                f"restore {mig.filename} as it was and put the change in a new migration file"
            )


def ensure_roles(conn: psycopg.Connection) -> None:
    """Create the NOLOGIN roles where missing and make the current login a member of each (the migrating login)."""
    for role in ROLES:
        exists = conn.execute(_ROLE_EXISTS, (role,)).fetchone()
        if not exists:
            conn.execute(_CREATE_ROLE.format(sql.Identifier(role)))
        member = conn.cursor(row_factory=dict_row).execute(_IS_MEMBER, (role,)).fetchone()
        if not member or not member["member"]:
            conn.execute(_GRANT_ROLE.format(sql.Identifier(role)))


def may_not_migrate(conn: psycopg.Connection, schema: str, exc: psycopg.Error) -> DatabaseError:
    """The error for a login that lacks a privilege the migrations (or reading their state) need."""
    return DatabaseError(
        f"login {conn.info.user!r} may not migrate namespace {schema!r} ({exc.diag.message_primary}): "
        "run `citeline db migrate` with the admin login (its CITELINE_DATABASE_URL), then start again")


def apply_migrations(conn: psycopg.Connection, schema: str, embedding_dim: int, ts_config: str,
                     folder: Traversable | None = None) -> list[int]:
    """Create the namespace if needed and apply pending migrations; return the versions applied.

    ``folder``: where the migration files are (default: the package's; tests point it elsewhere).
    A login without the privileges (not the schema's owner) gets a :class:`DatabaseError` that says so."""
    try:
        return _apply(conn, schema, embedding_dim, ts_config, folder)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise may_not_migrate(conn, schema, exc) from exc
    except DatabaseError as exc:  # a migration file that failed: for want of a privilege, or another reason
        if isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
            raise may_not_migrate(conn, schema, exc.__cause__) from exc
        raise


def _apply(conn: psycopg.Connection, schema: str, embedding_dim: int, ts_config: str,
           folder: Traversable | None) -> list[int]:
    if not isinstance(embedding_dim, int) or not 1 <= embedding_dim <= 16000:
        raise DatabaseError(f"embedding dimension {embedding_dim!r} is out of range 1..16000")
    if not re.fullmatch(r"[a-z_]+", ts_config):
        raise DatabaseError(f"text search config {ts_config!r} is not a valid name")
    ident = sql.Identifier(schema)
    applied: list[int] = []
    with conn.transaction():
        conn.execute(_LOCK, (_MIGRATION_LOCK,))
        try:
            conn.execute(_CREATE_VECTOR)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"the pgvector extension is not available on this server ({exc.diag.message_primary}); "
                "install pgvector >= 0.7 or unset CITELINE_DATABASE_URL to use the embedded server"
            ) from exc
        ensure_roles(conn)
        conn.execute(_CREATE_SCHEMA.format(ident))
        conn.execute(_GRANT_SCHEMA.format(ident))
        conn.execute(_SEARCH_PATH.format(ident))
        conn.execute(_CREATE_VERSIONS)
        conn.execute(_ADD_CHECKSUM)
        done = {row["version"]: row["checksum"] for row in conn.cursor(row_factory=dict_row).execute(_VERSIONS)}
        migrations = available_migrations(folder)
        verify_checksums(done, migrations, schema)
        for mig in migrations:
            if mig.version in done:
                if done[mig.version] is None:  # applied before checksums were recorded: adopt the file's
                    conn.execute(_ADOPT_CHECKSUM, (mig.checksum, mig.version))
                continue
            text = (
                mig.sql.replace("__EMBEDDING_DIM__", str(embedding_dim))
                .replace("__TS_CONFIG__", ts_config)
                .replace("__SCHEMA__", ident.as_string(conn))
            )
            try:
                conn.execute(text)  # a trusted file shipped with the package
            except psycopg.Error as exc:
                raise DatabaseError(f"migration {mig.version:04d}_{mig.name} failed: {exc}") from exc
            conn.execute(_RECORD_VERSION, (mig.version, mig.name, mig.checksum))
            applied.append(mig.version)
        stored = conn.cursor(row_factory=dict_row).execute(_STORED_DIM).fetchone()
        if stored and int(stored["value"]) != embedding_dim:
            raise dimension_mismatch(schema, int(stored["value"]), embedding_dim)
    return applied


def migrations_needed(conn: psycopg.Connection, schema: str, folder: Traversable | None = None) -> list[Migration]:
    """What opening namespace ``schema`` would have to run; reads only (no lock, no DDL).

    The pending files, and applied ones whose checksum is not recorded yet (the runner adopts it); an empty
    list means the namespace is up to date. An applied file edited since raises :class:`MigrationChecksumError`.
    Needs SELECT on ``schema_migrations`` (granted to the application's roles by migration 0008).
    """
    migrations = available_migrations(folder)
    ident = sql.Identifier(schema)
    found = conn.cursor(row_factory=dict_row).execute(
        _HAS_META, (f"{ident.as_string(conn)}.schema_migrations",)).fetchone()
    if not found or not found["present"]:
        return migrations
    done = {row["version"]: row.get("checksum")
            for row in conn.cursor(row_factory=dict_row).execute(_VERSIONS_OF.format(ident))}
    verify_checksums(done, migrations, schema)
    return [mig for mig in migrations if mig.version not in done or done[mig.version] is None]


def stored_dimension(conn: psycopg.Connection, schema: str) -> int | None:
    """The embedding dimension namespace ``schema`` was created with; None where it does not exist yet.

    Read before the migrations, so that opening an existing index needs no embedding model (admin commands).
    """
    ident = sql.Identifier(schema)
    found = conn.cursor(row_factory=dict_row).execute(_HAS_META, (f"{ident.as_string(conn)}.index_meta",)).fetchone()
    if not found or not found["present"]:
        return None
    stored = conn.cursor(row_factory=dict_row).execute(_STORED_DIM_OF.format(ident)).fetchone()
    return int(stored["value"]) if stored else None


def dimension_mismatch(schema: str, stored: int, configured: int) -> SchemaMismatchError:
    return SchemaMismatchError(
        f"namespace {schema!r} was indexed with {stored}-dimensional embeddings but the configured "
        f"embedder produces {configured}; use another database.namespace or drop the namespace "
        f"(citeline db drop-namespace {schema} --yes) and sync again"
    )
