"""API keys: ``cl_<key_id>_<secret>`` strings that map a client to a principal.

Only ``sha256(secret)`` is stored. The secret has 256 bits of entropy, so a fast hash is enough (a slow
password hash protects low-entropy secrets; it would only add latency to every request here). The
``key_id`` is public: it names the key in listings and in audit rows. Keys are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from citeline.db import Database
from citeline.domain import Principal
from citeline.errors import AuthError
from citeline.store import PrincipalStore

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

    def create(self, user: str, *, admin: bool = False, label: str = "") -> NewKey:
        """A new key for an existing principal. The returned secret is the only copy."""
        self.principals.get(user)  # the principal must exist: its groups decide what the key sees
        key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
        secret = secrets.token_urlsafe(32)
        with self.db.writer() as conn:
            row = conn.execute(
                "INSERT INTO api_keys (key_id, secret_hash, user_id, is_admin, label) VALUES (%s, %s, %s, %s, %s)"
                " RETURNING created_at", (key_id, _hash(secret), user, admin, label)).fetchone()
        return NewKey(ApiKey(key_id, user, admin, label, row[0], None), f"cl_{key_id}_{secret}")

    def list(self, user: str | None = None) -> list[ApiKey]:
        with self.db.writer() as conn:
            rows = conn.execute(
                "SELECT key_id, user_id, is_admin, label, created_at, revoked_at FROM api_keys"
                " WHERE %(u)s::text IS NULL OR user_id = %(u)s ORDER BY id", {"u": user}).fetchall()
        return [ApiKey(*r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self.db.writer() as conn:
            return conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL",
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
                "SELECT k.secret_hash, k.is_admin, k.revoked_at, p.user_id, p.groups, p.team FROM api_keys k"
                " LEFT JOIN principals p ON p.user_id = k.user_id WHERE k.key_id = %s", (key_id,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(secret)):
            raise AuthError("unknown API key")
        if row[2] is not None:
            raise AuthError(f"API key {key_id} was revoked; ask an admin for a new one")
        if row[3] is None:
            raise AuthError(f"API key {key_id} belongs to a principal that no longer exists")
        return Authenticated(key_id, Principal(row[3], tuple(row[4]), row[5]), bool(row[1]))
