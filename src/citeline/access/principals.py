"""Principals (users with their groups and team) in PostgreSQL.

:class:`PrincipalDirectory` only reads; :class:`PrincipalStore` adds the writes, which the facade keeps
private (admin changes go through :class:`citeline.operations.admin.Admin`, audited).
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.rows import dict_row, kwargs_row

from citeline.db import Database
from citeline.domain import Principal
from citeline.errors import PrincipalError

__all__ = ["PrincipalDirectory", "PrincipalStore"]


def _principal(*, user_id: str, groups: list[str], team: str | None) -> Principal:
    return Principal(user_id, tuple(groups), team)


_PRINCIPALS = kwargs_row(_principal)


class PrincipalDirectory:
    """Principals (users with groups and a team), read-only: look one up, list them, read a principals file."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def read_file(path: Path) -> list[Principal]:
        """The ``[[principals]]`` entries (user, groups, team) of a TOML file; nothing is written."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PrincipalError(f"cannot read principals file {path}: {exc}") from exc
        entries = data.get("principals")
        if not isinstance(entries, list):
            raise PrincipalError(f"{path} has no [[principals]] tables (user = ..., groups = [...], team = ...)")
        principals = []
        for n, entry in enumerate(entries, 1):
            try:
                principals.append(Principal(entry["user"], tuple(entry.get("groups", ())), entry.get("team")))
            except (KeyError, TypeError, ValueError) as exc:
                raise PrincipalError(f"{path}: principal #{n} is invalid ({exc}); nothing was imported") from exc
        return principals

    def get(self, user: str) -> Principal:
        with self.db.writer() as conn:
            found = conn.cursor(row_factory=_PRINCIPALS).execute(
                "SELECT user_id, groups, team FROM principals WHERE user_id = %s", (user,)).fetchone()
        if found is None:
            raise PrincipalError(f"unknown principal {user!r}: add it with `citeline principals add {user} "
                                 "--groups ...`")
        return found

    def list(self) -> list[Principal]:
        with self.db.writer() as conn:
            return conn.cursor(row_factory=_PRINCIPALS).execute(
                "SELECT user_id, groups, team FROM principals ORDER BY user_id").fetchall()


class PrincipalStore(PrincipalDirectory):
    """Principals with their writes. The facade keeps it private: admin changes go through
    :class:`citeline.operations.admin.Admin`, which writes each one's audit row in the same transaction.

    Writes take an optional ``conn``: pass the caller's transaction to commit the change together with
    something else (its audit row); without one each call is its own transaction.
    """

    @contextlib.contextmanager
    def _tx(self, conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
        if conn is not None:
            yield conn
        else:
            with self.db.writer() as own:
                yield own

    def put(self, principal: Principal, *, conn: psycopg.Connection | None = None) -> Principal:
        """Add a principal or replace its groups and team (an existing principal keeps its keys)."""
        with self._tx(conn) as c:
            c.execute(
                "INSERT INTO principals (user_id, groups, team, tokens) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (user_id) DO UPDATE SET groups = EXCLUDED.groups, team = EXCLUDED.team,"
                " tokens = EXCLUDED.tokens, updated_at = now()",
                (principal.user, list(principal.groups), principal.team, list(principal.tokens)),
            )
        return principal

    def import_file(self, path: Path, *, conn: psycopg.Connection | None = None) -> list[Principal]:
        """Add or replace every ``[[principals]]`` entry of a TOML file, all in one transaction."""
        principals = self.read_file(path)
        with self._tx(conn) as c:
            return [self.put(p, conn=c) for p in principals]

    def delete(self, user: str, *, conn: psycopg.Connection | None = None) -> list[str] | None:
        """Remove a principal and revoke every key issued to it, together; the revoked key ids (None: no such
        principal). A principal re-created under the same name later is a new one: the old keys stay dead."""
        with self._tx(conn) as c:
            if c.execute("DELETE FROM principals WHERE user_id = %s", (user,)).rowcount == 0:
                return None
            rows = c.cursor(row_factory=dict_row).execute(
                "UPDATE api_keys SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL RETURNING key_id",
                (user,)).fetchall()
        return sorted(r["key_id"] for r in rows)

    def remove(self, user: str, *, conn: psycopg.Connection | None = None) -> bool:
        """:meth:`delete`; True if the principal existed."""
        return self.delete(user, conn=conn) is not None
