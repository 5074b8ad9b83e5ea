"""Database access: one :class:`Database` per process, holding a psycopg 3 connection pool.

Every query runs in a transaction that has taken one of two roles:

* :meth:`Database.reader` — ``citeline_reader`` on behalf of the asking principal; row-level security
  filters chunks and documents in the database itself, so no query path can return a row the principal
  may not see, even one written without a ``WHERE``. The principal is set by ``citeline_login()``
  (migration 0006), which only ``citeline_writer`` may call: it stores the name with a MAC bound to the
  backend and the transaction, and the policies accept only that, so a database login that holds just
  ``citeline_reader`` cannot name another principal by setting ``citeline.user`` itself.
* :meth:`Database.writer` — ``citeline_writer`` for ingest and admin work (sees and writes everything).

The connection's own login owns nothing: it only needs the two roles. The schema's owner (the admin login:
``citeline db migrate`` with its ``CITELINE_DATABASE_URL``, or the embedded server's superuser, kept as
``admin_url``) runs the migrations. Opening a Database first reads the namespace's state (which migrations are
applied, with their checksums): an up-to-date namespace is opened without a lock or any DDL. Pending
migrations are applied when ``database.auto_migrate`` is true (and the login may), else opening fails
naming them and ``citeline db migrate`` (:mod:`citeline.db.roles` has the least-privilege logins).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from citeline.db.local import start_embedded
from citeline.db.migrations import Migration, apply_migrations, may_not_migrate, migrations_needed, stored_dimension
from citeline.db.roles import embedded_login_url
from citeline.errors import DatabaseError

if TYPE_CHECKING:
    from citeline.settings import Settings

__all__ = ["Database"]

log = logging.getLogger(__name__)

# Each connection's and transaction's opening statements (see reader() and writer()); values are bound
# parameters, the namespace is an identifier composed with psycopg.sql.
_SET_SEARCH_PATH = sql.SQL("SET search_path TO {}, public")
_SET_LIMITS = "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)"
_AS_READER = ("SELECT set_config('role', 'citeline_writer', true),"
              " citeline_login(%s),"
              " set_config('role', 'citeline_reader', true),"
              " set_config('hnsw.iterative_scan', 'relaxed_order', true),"
              " set_config('hnsw.ef_search', %s, true)")
_AS_WRITER = "SELECT set_config('role', 'citeline_writer', true)"
_SET_ROLE_WRITER = "SET ROLE citeline_writer"
_RESET_ROLE = "RESET ROLE"
_DROP_NAMESPACE = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")


def _dimension(conn: psycopg.Connection, namespace: str, embedding_dim: int | Callable[[], int]) -> int:
    """An int is the configured embedder's; a callable (that loads the embedding model) is called only where the
    namespace is new: an existing one's recorded dimension is used (admin commands need no model)."""
    if isinstance(embedding_dim, int):
        return embedding_dim
    stored = stored_dimension(conn, namespace)
    return stored if stored is not None else embedding_dim()


class Database:
    """A pool of connections to one namespace (Postgres schema) of the citeline index.

    ``admin_url``: a login that owns the schema, for the owner's work (migrations, :meth:`drop_namespace`)
    where ``url``'s login may not do it (the embedded server's application login); None: ``url``'s own.
    ``auto_migrate``: apply pending migrations on opening (else opening a namespace that has some fails).
    """

    def __init__(self, url: str, *, namespace: str, embedding_dim: int | Callable[[], int],
                 ts_config: str = "english", min_size: int = 1, max_size: int = 8, connect_timeout_s: float = 10.0,
                 ef_search: int = 200, pool_timeout_s: float | None = None, admin_url: str | None = None,
                 auto_migrate: bool = True) -> None:
        self.url = url
        self.admin_url = admin_url
        self._limits: tuple[str, str] | None = None  # (lock_timeout, statement_timeout) of request transactions
        self.namespace = namespace
        self.ts_config = ts_config
        self.ef_search = ef_search
        self.embedding_dim, self.applied_migrations = self._prepare(embedding_dim, auto_migrate, connect_timeout_s)
        self._set_search_path = _SET_SEARCH_PATH.format(sql.Identifier(namespace)).as_string(None)
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout_s if pool_timeout_s is None else pool_timeout_s,
            kwargs={"autocommit": False, "prepare_threshold": None},
            configure=self._configure,
            open=True,
            name=f"citeline-{namespace}",
        )

    def _prepare(self, embedding_dim: int | Callable[[], int], auto_migrate: bool,
                 connect_timeout_s: float) -> tuple[int, list[int]]:
        """The namespace's dimension and the migrations applied now: none (no lock, no DDL) where it is up to date."""
        url = self.admin_url or self.url
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=int(connect_timeout_s)) as conn:
                try:
                    dimension = _dimension(conn, self.namespace, embedding_dim)
                    needed = migrations_needed(conn, self.namespace)
                except psycopg.errors.InsufficientPrivilege as exc:  # no SELECT on schema_migrations (before 0008)
                    raise may_not_migrate(conn, self.namespace, exc) from exc
                if not needed:
                    return dimension, []
                if not auto_migrate:
                    raise DatabaseError(
                        f"namespace {self.namespace!r} has pending migrations ({_names(needed)}) and "
                        "database.auto_migrate is false: run `citeline db migrate` with the admin login")
                return dimension, apply_migrations(conn, self.namespace, dimension, self.ts_config)
        except psycopg.OperationalError as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL ({_redact(url)}): {exc}; check CITELINE_DATABASE_URL "
                "or unset it to use the embedded server"
            ) from exc

    @classmethod
    def from_settings(cls, settings: Settings, embedding_dim: int | Callable[[], int],
                      namespace: str | None = None) -> Database:
        """The configured server's pool logs in as its URL's login; the embedded server's as the application login
        ``citeline_app`` (not a superuser), with the superuser kept as ``admin_url`` for the owner's work."""
        url, admin_url = settings.effective_database_url(), None
        if url is None:
            admin_url = start_embedded(settings.home)
            url = embedded_login_url(admin_url)
        return cls(
            url,
            admin_url=admin_url,
            namespace=namespace or settings.database.namespace,
            embedding_dim=embedding_dim,
            ts_config=settings.retrieval.text_search_config,
            min_size=settings.database.pool_min_size,
            max_size=settings.database.pool_max_size,
            connect_timeout_s=settings.database.connect_timeout_s,
            ef_search=settings.retrieval.ef_search,
            pool_timeout_s=settings.database.pool_timeout_s,
            auto_migrate=settings.database.auto_migrate,
        )

    def limit_requests(self, *, lock_timeout_s: float, statement_timeout_s: float) -> None:
        """Bound every later transaction's waits (``citeline serve`` calls this; syncs and the CLI do not).

        Each transaction sets ``lock_timeout`` and ``statement_timeout`` locally (0 = no limit), so a request
        whose SQL waits behind a lock (an audit append behind a locked ``audit_log``) fails after
        ``lock_timeout_s`` with :class:`psycopg.errors.LockNotAvailable` instead of holding its connection
        and thread for as long as the lock is held. The settings travel with the transaction's first
        statements (no extra round trip in pipeline mode).
        """
        self._limits = (f"{int(lock_timeout_s * 1000)}ms", f"{int(statement_timeout_s * 1000)}ms")

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.execute(self._set_search_path)
        register_vector(conn)
        conn.commit()

    @contextlib.contextmanager
    def _transaction(self, pipeline: bool = False) -> Iterator[psycopg.Connection]:
        try:
            with self.pool.connection() as conn, (conn.pipeline() if pipeline else contextlib.nullcontext()), \
                    conn.transaction():
                if self._limits is not None:
                    conn.execute(_SET_LIMITS, self._limits)
                yield conn
        except PoolTimeout as exc:
            raise DatabaseError(
                f"no database connection free after {self.pool.timeout}s (pool max {self.pool.max_size}); "
                "retry later, or raise database.pool_max_size / database.pool_timeout_s"
            ) from exc

    @contextlib.contextmanager
    def reader(self, user: str | None) -> Iterator[psycopg.Connection]:
        """A transaction as ``citeline_reader`` on behalf of ``user`` (``None``: public documents only).

        It runs in pipeline mode: ``BEGIN``, the settings and the first query travel in one round trip,
        ``COMMIT`` in a second (results are read with ``fetch*`` as usual; ``COPY`` is not available here).
        """
        with self._transaction(pipeline=True) as conn:
            # the identity is set as the writer, through citeline_login() (migration 0006): a login that
            # holds only citeline_reader cannot call it, and the policies ignore a citeline.user set by hand.
            # The target list runs left to right: login as the writer, then become the reader.
            conn.execute(_AS_READER, (user or "", str(self.ef_search)))
            yield conn

    @contextlib.contextmanager
    def writer(self, *, pipeline: bool = False) -> Iterator[psycopg.Connection]:
        """A transaction as ``citeline_writer`` (ingest and admin work).

        ``pipeline=True`` sends statements without waiting for each reply (until a result is fetched):
        fewer round trips for short hot-path transactions (API-key lookup, audit appends); no ``COPY``.
        """
        with self._transaction(pipeline) as conn:
            conn.execute(_AS_WRITER)
            yield conn

    @contextlib.contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """A dedicated connection held for a long operation (advisory locks), as ``citeline_writer``."""
        with self.pool.connection() as conn:
            conn.autocommit = True
            try:
                conn.execute(_SET_ROLE_WRITER)
                yield conn
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(_RESET_ROLE)
                conn.autocommit = False

    def drop_namespace(self) -> None:
        """Drop this namespace's schema and everything in it (used by evaluation clean-up and tests)."""
        with psycopg.connect(self.admin_url or self.url, autocommit=True) as conn:
            conn.execute(_DROP_NAMESPACE.format(sql.Identifier(self.namespace)))

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _names(migrations: list[Migration]) -> str:
    return ", ".join(m.filename for m in migrations)


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable url>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
