"""Principals and API keys, changed only together with an audit row: :class:`Admin` (``cl.admin``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from citeline.access.audit import AuditLog
from citeline.access.keys import KeyStore, NewKey
from citeline.access.principals import PrincipalStore
from citeline.db import Database
from citeline.domain import Principal

__all__ = ["Admin", "audited"]


@contextlib.contextmanager
def audited(db: Database, audit: Callable[[], AuditLog]) -> Iterator[tuple[psycopg.Connection, AuditLog]]:
    """One transaction for an admin change and its audit row (the audit key is loaded before it opens)."""
    log = audit()
    with db.writer() as conn:
        yield conn, log


class Admin:
    """Admin changes to principals and keys: each one commits together with its audit row (``actor`` names
    the acting identity), or not at all."""

    def __init__(self, db: Database, audit: Callable[[], AuditLog]) -> None:
        self._db = db
        self._audit = audit
        self._principals = PrincipalStore(db)
        self._keys = KeyStore(db)

    def add_principal(self, principal: Principal, *, actor: str) -> Principal:
        """Add a principal or replace its groups and team (an existing principal keeps its keys)."""
        with audited(self._db, self._audit) as (conn, audit):
            done = self._principals.put(principal, conn=conn)
            audit.append_in(conn, "admin", "principal.put", principal=actor, payload={
                "user": principal.user, "groups": list(principal.groups), "team": principal.team})
        return done

    def delete_principal(self, user: str, *, actor: str) -> list[str] | None:
        """Remove a principal and revoke its keys; the revoked key ids (None: there was no such principal)."""
        with audited(self._db, self._audit) as (conn, audit):
            revoked = self._principals.delete(user, conn=conn)
            audit.append_in(conn, "admin", "principal.remove", principal=actor,
                            payload={"user": user, "removed": revoked is not None, "revoked_keys": revoked or []})
        return revoked

    def remove_principal(self, user: str, *, actor: str) -> bool:
        """:meth:`delete_principal`; True if the principal existed."""
        return self.delete_principal(user, actor=actor) is not None

    def import_principals(self, path: Path, *, actor: str) -> list[Principal]:
        """Add or replace every ``[[principals]]`` entry of a TOML file, all in one transaction."""
        with audited(self._db, self._audit) as (conn, audit):
            done = self._principals.import_file(path, conn=conn)
            audit.append_in(conn, "admin", "principal.import", principal=actor,
                            payload={"file": str(path), "users": [p.user for p in done]})
        return done

    def create_key(self, user: str, *, actor: str, admin: bool = False, label: str = "") -> NewKey:
        """A new key for an existing principal; its secret is shown once (``NewKey.secret``), never stored."""
        with audited(self._db, self._audit) as (conn, audit):
            new = self._keys.create(user, admin=admin, label=label, conn=conn)
            audit.append_in(conn, "admin", "key.create", principal=actor,
                            payload={"key_id": new.key.key_id, "user": user, "admin": admin, "label": label})
        return new

    def revoke_key(self, key_id: str, *, actor: str) -> bool:
        """Revoke a key; False if there was no such unrevoked key (the attempt is audited either way)."""
        with audited(self._db, self._audit) as (conn, audit):
            done = self._keys.revoke(key_id, conn=conn)
            audit.append_in(conn, "admin", "key.revoke", principal=actor, payload={"key_id": key_id, "revoked": done})
        return done
