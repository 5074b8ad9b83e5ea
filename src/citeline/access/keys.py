"""API keys: ``cl_<key_id>_<secret>`` strings that map a client to a principal.

Only ``sha256(secret)`` is stored. The secret has 256 bits of entropy, so a fast hash is enough (a slow
password hash protects low-entropy secrets; it would only add latency to every request here). The
``key_id`` is public: it names the key in listings and in audit rows. Keys are compared in constant time.

A key belongs to one *incarnation* of its principal (``principals.incarnation``, migration 0005): removing
the principal revokes its keys, and a principal re-created under the same name (a new hire, a re-import,
raw SQL) is a new incarnation that the old keys do not authenticate as. Changing a principal's groups
keeps its incarnation and its keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row, dict_row

from citeline.db import Database
from citeline.domain import Principal
from citeline.errors import AuthError, PrincipalError

__all__ = ["ApiKey", "Authenticated", "KeyDirectory", "KeyStore", "NewKey"]

_KEY = re.compile(r"^cl_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    user: str
    is_admin: bool
    label: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # the whole "cl_..." string; shown once, never stored


@dataclass(frozen=True)
class Authenticated:
    key_id: str
    principal: Principal
    is_admin: bool


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_CREATE = ("INSERT INTO api_keys (key_id, secret_hash, user_id, is_admin, label, principal_incarnation)"
           " SELECT %s, %s, p.user_id, %s, %s, p.incarnation FROM principals p WHERE p.user_id = %s"
           " RETURNING created_at")
_LIST = ('SELECT key_id, user_id AS "user", is_admin, label, created_at, revoked_at FROM api_keys'
         " WHERE %(u)s::text IS NULL OR user_id = %(u)s ORDER BY id")
_REVOKE = "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL"
_LOOKUP = ("SELECT k.secret_hash, k.is_admin, k.revoked_at, p.user_id, p.groups, p.team,"
           " p.incarnation IS NOT DISTINCT FROM k.principal_incarnation AS same_incarnation FROM api_keys k"
           " LEFT JOIN principals p ON p.user_id = k.user_id WHERE k.key_id = %s")


class KeyDirectory:
    """API keys, read-only: list them, authenticate a presented key."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, user: str | None = None) -> list[ApiKey]:
        with self.db.writer() as conn:
            return conn.cursor(row_factory=class_row(ApiKey)).execute(_LIST, {"u": user}).fetchall()

    def authenticate(self, presented: str | None) -> Authenticated:
        """The principal behind a presented key; :class:`AuthError` if missing, malformed, unknown or revoked."""
        if not presented:
            raise AuthError("missing API key: send 'Authorization: Bearer cl_...' (create one with "
                            "`citeline keys create USER`)")
        m = _KEY.match(presented.strip())
        if m is None:
            raise AuthError("malformed API key: keys look like cl_<12 chars>_<43 chars>")
        key_id, secret = m.groups()
        with self.db.writer(pipeline=True) as conn:  # BEGIN + role + lookup in one round trip
            row = conn.cursor(row_factory=dict_row).execute(_LOOKUP, (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
            raise AuthError("unknown API key")
        if row["revoked_at"] is not None:
            raise AuthError(f"API key {key_id} was revoked; ask an admin for a new one")
        if row["user_id"] is None or not row["same_incarnation"]:  # removed, or removed and re-created
            raise AuthError(f"API key {key_id} belongs to a principal that no longer exists; ask an admin for a new "
                            "one")
        return Authenticated(key_id, Principal(row["user_id"], tuple(row["groups"]), row["team"]),
                             bool(row["is_admin"]))


class KeyStore(KeyDirectory):
    """API keys with their writes (create, revoke). The facade keeps it private: admin changes go through
    :class:`citeline.operations.admin.Admin`, which audits them."""

    def _tx(self, conn: psycopg.Connection | None) -> contextlib.AbstractContextManager[psycopg.Connection]:
        return contextlib.nullcontext(conn) if conn is not None else self.db.writer()

    def create(self, user: str, *, admin: bool = False, label: str = "",
               conn: psycopg.Connection | None = None) -> NewKey:
        """A new key for an existing principal, bound to its current incarnation. The secret is the only copy.

        ``conn``: the caller's transaction (the key then commits with whatever else it writes there).
        """
        key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
        secret = secrets.token_urlsafe(32)
        with self._tx(conn) as c:
            # the principal must exist (its groups decide what the key sees); the key takes its incarnation
            row = c.cursor(row_factory=dict_row).execute(
                _CREATE, (key_id, _hash(secret), admin, label, user)).fetchone()
        if row is None:
            raise PrincipalError(f"unknown principal {user!r}: add it with `citeline principals add {user} "
                                 "--groups ...`")
        return NewKey(ApiKey(key_id, user, admin, label, row["created_at"], None), f"cl_{key_id}_{secret}")

    def revoke(self, key_id: str, *, conn: psycopg.Connection | None = None) -> bool:
        with self._tx(conn) as c:
            return c.execute(_REVOKE, (key_id,)).rowcount > 0
