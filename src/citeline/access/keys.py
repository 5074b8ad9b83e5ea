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

from citeline.db import Database
from citeline.domain import Principal
from citeline.errors import AuthError, PrincipalError
from citeline.access.principals import PrincipalStore

__all__ = ["ApiKey", "Authenticated", "KeyStore", "NewKey"]

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


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.principals = PrincipalStore(db)

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
            row = c.execute(
                "INSERT INTO api_keys (key_id, secret_hash, user_id, is_admin, label, principal_incarnation)"
                " SELECT %s, %s, p.user_id, %s, %s, p.incarnation FROM principals p WHERE p.user_id = %s"
                " RETURNING created_at", (key_id, _hash(secret), admin, label, user)).fetchone()
        if row is None:
            raise PrincipalError(f"unknown principal {user!r}: add it with `citeline principals add {user} "
                                 "--groups ...`")
        return NewKey(ApiKey(key_id, user, admin, label, row[0], None), f"cl_{key_id}_{secret}")

    def list(self, user: str | None = None) -> list[ApiKey]:
        with self.db.writer() as conn:
            rows = conn.execute(
                "SELECT key_id, user_id, is_admin, label, created_at, revoked_at FROM api_keys"
                " WHERE %(u)s::text IS NULL OR user_id = %(u)s ORDER BY id", {"u": user}).fetchall()
        return [ApiKey(*r) for r in rows]

    def revoke(self, key_id: str, *, conn: psycopg.Connection | None = None) -> bool:
        with self._tx(conn) as c:
            return c.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL",
                                (key_id,)).rowcount > 0

    def authenticate(self, presented: str | None) -> Authenticated:
        """The principal behind a presented key; :class:`AuthError` if missing, malformed, unknown or revoked."""
        if not presented:
            raise AuthError("missing API key: send 'Authorization: Bearer cl_...' (create one with "
                            "`citeline keys create --user USER`)")
        m = _KEY.match(presented.strip())
        if m is None:
            raise AuthError("malformed API key: keys look like cl_<12 chars>_<43 chars>")
        key_id, secret = m.groups()
        with self.db.writer(pipeline=True) as conn:  # BEGIN + role + lookup in one round trip
            row = conn.execute(
                "SELECT k.secret_hash, k.is_admin, k.revoked_at, p.user_id, p.groups, p.team,"
                " p.incarnation IS NOT DISTINCT FROM k.principal_incarnation FROM api_keys k"
                " LEFT JOIN principals p ON p.user_id = k.user_id WHERE k.key_id = %s", (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(secret)):
            raise AuthError("unknown API key")
        if row[2] is not None:
            raise AuthError(f"API key {key_id} was revoked; ask an admin for a new one")
        if row[3] is None or not row[6]:  # removed, or removed and re-created: a new principal of that name
            raise AuthError(f"API key {key_id} belongs to a principal that no longer exists; ask an admin for a new "
                            "one")
        return Authenticated(key_id, Principal(row[3], tuple(row[4]), row[5]), bool(row[1]))
