"""The ``scim`` principal source: users and groups that an identity provider pushes over SCIM 2.0.

The HTTP side is ``serving/api/scim.py`` (``/scim/v2/``); each change goes through
:class:`citeline.operations.scim.Scim`, which writes it here and reconciles the principals in the same
transaction as its audit row. A user is a principal named by its ``userName`` while ``active``; its groups are
the ``displayName`` of every group that lists it. ``fetch()`` returns that listing, so
``citeline principals sync --source scim`` repairs principals edited by hand since the last push.

The SQL here runs in the caller's transaction (``conn``). Names are checked when written: runs of white space
map to '-' (group "Sales Team" is citeline group ``Sales-Team``; two names that map alike are a 409), and a name
with control characters or over 200 characters is refused (400).
"""

from __future__ import annotations

import hmac
import os
import re
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from citeline.contracts.principal_source import Listing
from citeline.domain import Principal
from citeline.errors import ConfigError, PrincipalError, ScimError

__all__ = ["ScimConfig", "ScimSource", "ScimStore", "mapped_name"]

_USER_COLS = "id::text AS id, user_name, external_id, active, resource, version, created_at, updated_at"
_GROUP_COLS = "id::text AS id, display_name, external_id, version, created_at, updated_at"
_LISTING = ("SELECT u.user_name, coalesce(array_agg(g.display_name) FILTER (WHERE g.id IS NOT NULL), '{}') AS groups"
            " FROM scim_users u LEFT JOIN scim_members m ON m.user_id = u.id"
            " LEFT JOIN scim_groups g ON g.id = m.group_id WHERE u.active GROUP BY u.id, u.user_name")
_SPACES = re.compile(r"\s+")
_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "scim-token", "token"}


class ScimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr | None = Field(None, description="the bearer token the identity provider sends (prefer "
                                    "token_env or token_file)")
    token_env: str = Field("CITELINE_SCIM_TOKEN", description="environment variable holding the token")
    token_file: Path | None = Field(None, description="file holding the token (relative: to the config file)")
    max_results: int = Field(100, ge=1, le=1000, description="resources per page at most (count is capped)")
    max_group_members: int = Field(10_000, ge=1, description="a group with more members is refused (400)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="a larger request body is refused (413)")

    @field_validator("token")
    @classmethod
    def _strong(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _check_token(v.get_secret_value(), "token")
        return v


def _check_token(value: str, where: str) -> str:
    value = value.strip()
    if len(value) < 32 or value.lower() in _PLACEHOLDERS:
        raise ConfigError(f"the SCIM token ({where}) must be at least 32 random characters, e.g. from "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return value


class ScimSource:
    """Principals as the identity provider last pushed them. Built as ``ScimSource(config, source=, db=)``."""

    Config = ScimConfig

    def __init__(self, config: ScimConfig, *, source: str = "scim", db: Any = None) -> None:
        self.config = config
        self.name = source
        self._db = db

    def token(self) -> str:
        """The configured bearer token; ConfigError (never the value) when unset or weak."""
        c = self.config
        if c.token is not None:
            return c.token.get_secret_value().strip()
        if c.token_file is not None:
            try:
                return _check_token(c.token_file.read_text(encoding="utf-8"), "token_file")
            except OSError as exc:
                raise ConfigError(f"cannot read the SCIM token_file {c.token_file}: {exc.strerror}") from None
        value = os.environ.get(c.token_env)
        if not value:
            raise ConfigError(f"SCIM principal source {self.name!r} has no token: set {c.token_env} (token_env) "
                              "or token_file")
        return _check_token(value, c.token_env)

    def authenticate(self, presented: str | None) -> bool:
        """True when ``presented`` is the token (compared in constant time)."""
        expected = self.token()
        return presented is not None and hmac.compare_digest(presented.strip().encode(), expected.encode())

    def fetch(self) -> Listing:
        if self._db is None:
            raise PrincipalError(f"principal source {self.name!r} reads what was pushed from the database: "
                                 "build it with db=")
        try:
            with self._db.writer() as conn:
                return ScimStore(self.config).listing(conn)
        except Exception as exc:  # the database is down or closed: no listing (an empty one would remove everyone)
            raise PrincipalError(f"principal source {self.name!r}: cannot read what the identity provider pushed "
                                 f"({type(exc).__name__}: {exc}); nothing was changed") from None


def _uuid(value: str, kind: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ScimError(f"no {kind} with id {value[:80]!r}", status=404) from None


def mapped_name(value: str) -> str:
    """The principal or group name a SCIM userName or displayName maps to: runs of white space become '-'."""
    return _SPACES.sub("-", value.strip())


def _name_ok(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScimError(f"{what} is required (a non-empty string)", scim_type="invalidValue")
    try:
        Principal(mapped_name(value))
    except ValueError:
        raise ScimError(f"{what} {value[:200]!r} cannot name a citeline principal or group: use 1-200 "
                        "characters without control characters", scim_type="invalidValue") from None
    return value.strip()


def _page(conn: psycopg.Connection, table: str, columns: str, name: tuple[str, str], flt: tuple[str, str] | None,
          start: int, count: int) -> tuple[int, list[dict[str, Any]]]:
    """The total and one page (``start``: 1-based) of ``table``'s rows, oldest first, optionally filtered by
    ``flt`` = (attribute, value): the name attribute (``name`` = (SCIM attribute, column)) case-insensitively,
    or ``externalId`` exactly. ``table`` and ``columns`` are this module's constants, never the caller's input."""
    where, args = "", []
    if flt is not None:
        attribute, column = name
        where = f" WHERE lower({column}) = %s" if flt[0] == attribute else " WHERE external_id = %s"
        args = [flt[1].lower() if flt[0] == attribute else flt[1]]
    cur = conn.cursor(row_factory=dict_row)
    total = cur.execute(f"SELECT count(*) AS n FROM {table}{where}", args).fetchone()["n"]  # type: ignore[index]
    rows = cur.execute(f"SELECT {columns} FROM {table}{where} ORDER BY created_at, id OFFSET %s LIMIT %s",
                       [*args, start - 1, count]).fetchall()
    return total, rows


class ScimStore:
    """SCIM users, groups and memberships in PostgreSQL (``conn``: the caller's transaction)."""

    def __init__(self, config: ScimConfig) -> None:
        self.config = config

    # -- users ------------------------------------------------------------------------------------
    def get_user(self, conn: psycopg.Connection, user_id: str) -> dict[str, Any]:
        row = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_USER_COLS} FROM scim_users WHERE id = %s::uuid", (_uuid(user_id, "User"),)).fetchone()
        if row is None:
            raise ScimError(f"no User with id {user_id}", status=404)
        return row

    def list_users(self, conn: psycopg.Connection, flt: tuple[str, str] | None, start: int,
                   count: int) -> tuple[int, list[dict[str, Any]]]:
        return _page(conn, "scim_users", _USER_COLS, ("userName", "user_name"), flt, start, count)

    def put_user(self, conn: psycopg.Connection, resource: dict[str, Any],
                 user_id: str | None = None) -> dict[str, Any]:
        """Create (``user_id`` None) or replace a user; 409 when another user has the userName."""
        name = _name_ok(resource.get("userName"), "userName")
        active = resource.get("active", self._active(conn, user_id))  # absent: unchanged (a new user: active)
        if not isinstance(active, bool):
            raise ScimError("active must be true or false", scim_type="invalidValue")
        body = {k: v for k, v in resource.items() if k not in ("id", "meta", "password")}  # never store a password
        try:
            with conn.transaction():
                if user_id is None:
                    row = conn.cursor(row_factory=dict_row).execute(
                        f"INSERT INTO scim_users (user_name, external_id, active, resource) VALUES (%s, %s, %s, %s)"
                        f" RETURNING {_USER_COLS}", (name, resource.get("externalId"), active, Jsonb(body))).fetchone()
                else:
                    row = conn.cursor(row_factory=dict_row).execute(
                        "UPDATE scim_users SET user_name = %s, external_id = %s, active = %s, resource = %s,"
                        f" version = version + 1, updated_at = now() WHERE id = %s::uuid RETURNING {_USER_COLS}",
                        (name, resource.get("externalId"), active, Jsonb(body), _uuid(user_id, "User"))).fetchone()
        except psycopg.errors.UniqueViolation:
            raise ScimError(f"a User with userName {name!r} exists", status=409, scim_type="uniqueness") from None
        if row is None:
            raise ScimError(f"no User with id {user_id}", status=404)
        return row

    def _active(self, conn: psycopg.Connection, user_id: str | None) -> bool:
        if user_id is None:
            return True
        row = conn.execute("SELECT active FROM scim_users WHERE id = %s::uuid", (_uuid(user_id, "User"),)).fetchone()
        return bool(row[0]) if row else True

    def names(self, conn: psycopg.Connection, user_ids: list[str]) -> set[str]:
        """The principal names the users ``user_ids`` map to now (active or not)."""
        rows = conn.execute("SELECT user_name FROM scim_users WHERE id = ANY(%s::uuid[])",
                            ([_uuid(i, "User") for i in user_ids],)).fetchall()
        return {mapped_name(r[0]) for r in rows}

    def delete_user(self, conn: psycopg.Connection, user_id: str) -> str:
        """Delete a user (and its memberships); its userName."""
        row = conn.cursor(row_factory=dict_row).execute(
            "DELETE FROM scim_users WHERE id = %s::uuid RETURNING user_name", (_uuid(user_id, "User"),)).fetchone()
        if row is None:
            raise ScimError(f"no User with id {user_id}", status=404)
        return str(row["user_name"])

    # -- groups -----------------------------------------------------------------------------------
    def get_group(self, conn: psycopg.Connection, group_id: str) -> dict[str, Any]:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(f"SELECT {_GROUP_COLS} FROM scim_groups WHERE id = %s::uuid",
                          (_uuid(group_id, "Group"),)).fetchone()
        if row is None:
            raise ScimError(f"no Group with id {group_id}", status=404)
        row["members"] = cur.execute(
            "SELECT u.id::text AS value, coalesce(m.display, u.user_name) AS display FROM scim_members m"
            " JOIN scim_users u ON u.id = m.user_id WHERE m.group_id = %s::uuid ORDER BY u.user_name",
            (row["id"],)).fetchall()
        return row

    def list_groups(self, conn: psycopg.Connection, flt: tuple[str, str] | None, start: int,
                    count: int) -> tuple[int, list[dict[str, Any]]]:
        total, ids = _page(conn, "scim_groups", "id::text AS id", ("displayName", "display_name"), flt, start, count)
        return total, [self.get_group(conn, r["id"]) for r in ids]

    def put_group(self, conn: psycopg.Connection, resource: dict[str, Any],
                  group_id: str | None = None) -> dict[str, Any]:
        """Create or replace a group and its members (every member must be a known User)."""
        name = _name_ok(resource.get("displayName"), "displayName")
        members = resource.get("members") or []
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            raise ScimError("members must be a list of {\"value\": \"<user id>\"} objects", scim_type="invalidValue")
        if len(members) > self.config.max_group_members:
            raise ScimError(f"group {name!r} has {len(members)} members, more than max_group_members="
                            f"{self.config.max_group_members}; nothing was changed", status=413)
        ids = sorted({_uuid(str(m.get("value")), "User") for m in members})
        shown = {_uuid(str(m.get("value")), "User"): m.get("display") for m in members
                 if isinstance(m.get("display"), str)}
        cur = conn.cursor(row_factory=dict_row)
        known = {r["id"] for r in cur.execute("SELECT id::text AS id FROM scim_users WHERE id = ANY(%s::uuid[])",
                                              (ids,)).fetchall()}
        if len(known) != len(ids):
            raise ScimError(f"members {sorted(set(ids) - known)[:5]} are not Users here", scim_type="invalidValue")
        try:
            with conn.transaction():
                if group_id is None:
                    row = cur.execute("INSERT INTO scim_groups (display_name, external_id) VALUES (%s, %s)"
                                      " RETURNING id::text AS id", (name, resource.get("externalId"))).fetchone()
                else:
                    row = cur.execute("UPDATE scim_groups SET display_name = %s, external_id = %s, version = version"
                                      " + 1, updated_at = now() WHERE id = %s::uuid RETURNING id::text AS id",
                                      (name, resource.get("externalId"), _uuid(group_id, "Group"))).fetchone()
        except psycopg.errors.UniqueViolation:
            raise ScimError(f"a Group named {name!r} exists", status=409, scim_type="uniqueness") from None
        if row is None:
            raise ScimError(f"no Group with id {group_id}", status=404)
        cur.execute("DELETE FROM scim_members WHERE group_id = %s::uuid", (row["id"],))
        cur.execute("INSERT INTO scim_members (group_id, user_id, display) SELECT %s::uuid, u, s"
                    " FROM unnest(%s::uuid[], %s::text[]) AS t(u, s)", (row["id"], ids, [shown.get(i) for i in ids]))
        return self.get_group(conn, row["id"])

    def delete_group(self, conn: psycopg.Connection, group_id: str) -> str:
        row = conn.cursor(row_factory=dict_row).execute(
            "DELETE FROM scim_groups WHERE id = %s::uuid RETURNING display_name",
            (_uuid(group_id, "Group"),)).fetchone()
        if row is None:
            raise ScimError(f"no Group with id {group_id}", status=404)
        return str(row["display_name"])

    def listing(self, conn: psycopg.Connection, user_ids: list[str] | None = None) -> Listing:
        """Every active user (or those of ``user_ids``) as a principal with its groups."""
        if user_ids is None:
            rows = conn.cursor(row_factory=dict_row).execute(_LISTING).fetchall()
        else:
            rows = conn.cursor(row_factory=dict_row).execute(
                _LISTING.replace(" WHERE u.active", " WHERE u.active AND u.id = ANY(%s::uuid[])"),
                ([_uuid(i, "User") for i in user_ids],)).fetchall()
        return Listing.of([Principal(mapped_name(r["user_name"]), tuple(mapped_name(g) for g in r["groups"]))
                           for r in rows])
