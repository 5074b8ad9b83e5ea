"""The ``ldap`` principal source: users and their group memberships from an LDAP directory (ldap3).

Users are the entries under ``user_base_dn`` matching ``user_filter``, named by ``user_attribute``; a user's
groups are the ``group_name_attribute`` of every entry under ``group_base_dn`` matching ``group_filter`` whose
``member_attribute`` lists the user (its DN, or its name with ``member_is_dn = false`` for ``posixGroup``'s
``memberUid``). Nested groups are not expanded. The bind password comes from ``bind_password_env`` or
``bind_password_file`` (or ``bind_password``), never from a log line or an error message.

A directory that cannot be read completely (down, bad credentials, a timeout, an entry without a usable name,
more users or members than the limits) raises :class:`citeline.errors.PrincipalError`: no partial listing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import ldap3
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from citeline.contracts.principal_source import Listing
from citeline.domain import Principal
from citeline.errors import PrincipalError

__all__ = ["LdapSource"]


class LdapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^ldaps?://", description="ldap://host:389 or ldaps://host:636")
    bind_dn: str | None = Field(None, description="DN to bind as; unset = anonymous")
    bind_password: SecretStr | None = Field(None, description="prefer bind_password_env or bind_password_file")
    bind_password_env: str | None = Field(None, description="environment variable holding the bind password")
    bind_password_file: Path | None = Field(None, description="file holding the bind password (relative: to the "
                                            "config file)")
    start_tls: bool = Field(False, description="upgrade ldap:// with StartTLS before binding")
    user_base_dn: str
    user_filter: str = "(objectClass=inetOrgPerson)"
    user_attribute: str = Field("uid", description="the attribute that names the principal")
    team_attribute: str | None = Field(None, description="an attribute holding the principal's team (optional)")
    group_base_dn: str
    group_filter: str = "(objectClass=groupOfNames)"
    group_name_attribute: str = "cn"
    member_attribute: str = "member"
    member_is_dn: bool = Field(True, description="member values are DNs (groupOfNames); false: user names "
                               "(posixGroup memberUid)")
    max_users: int = Field(100_000, ge=1, description="more users than this: the sync fails, nothing changes")
    max_group_members: int = Field(50_000, ge=1, description="a group with more members: the sync fails")
    timeout_s: float = Field(10.0, gt=0, le=600, description="connect and per-reply timeout")
    page_size: int = Field(500, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_password(self) -> LdapConfig:
        given = [n for n in ("bind_password", "bind_password_env", "bind_password_file") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(f"set one of {', '.join(given)}, not several")
        return self


def _first(attrs: dict[str, Any], name: str) -> str | None:
    value = attrs.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value in (None, "") else str(value)


def _values(attrs: dict[str, Any], name: str) -> list[str]:
    value = attrs.get(name)
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


class LdapSource:
    """Principals and groups from an LDAP directory. Built as ``LdapSource(config, source=, db=)``."""

    Config = LdapConfig

    def __init__(self, config: LdapConfig, *, source: str = "ldap", db: Any = None) -> None:
        self.config = config
        self.name = source

    def _password(self) -> str | None:
        c = self.config
        if c.bind_password is not None:
            return c.bind_password.get_secret_value()
        if c.bind_password_env:
            value = os.environ.get(c.bind_password_env)
            if not value:
                raise PrincipalError(f"principal source {self.name!r}: the environment variable "
                                     f"{c.bind_password_env} (bind_password_env) is not set")
            return value
        if c.bind_password_file:
            try:
                return c.bind_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise PrincipalError(f"principal source {self.name!r}: cannot read bind_password_file "
                                     f"{c.bind_password_file}: {exc.strerror}") from None
        return None

    def fetch(self) -> Listing:
        c = self.config
        password = self._password()
        if c.bind_dn and not password:  # an empty password is an unauthenticated bind: it would see less, not fail
            raise PrincipalError(f"principal source {self.name!r}: bind_dn is set but the bind password is empty; "
                                 "set bind_password_env or bind_password_file (or drop bind_dn to bind anonymously)")
        try:
            timeout = max(1, math.ceil(c.timeout_s))  # ldap3 packs it into a socket option: whole seconds
            server = ldap3.Server(c.url, connect_timeout=timeout, get_info=ldap3.NONE)
            with ldap3.Connection(server, user=c.bind_dn, password=password, receive_timeout=timeout,
                                  raise_exceptions=True, read_only=True, auto_bind=False) as conn:
                if c.start_tls:
                    conn.start_tls()
                conn.bind()
                users = self._users(conn)
                groups = self._groups(conn, users)
        except PrincipalError:
            raise
        except Exception as exc:  # LDAP errors, sockets, a reply that does not decode (the message holds no password)
            raise PrincipalError(f"principal source {self.name!r}: cannot read the directory at {c.url}: "
                                 f"{type(exc).__name__}: {exc}; nothing was changed") from None
        try:
            return Listing.of([Principal(user, tuple(groups.get(dn, ())), team)
                               for dn, (user, team) in users.items()])
        except ValueError as exc:
            raise PrincipalError(f"principal source {self.name!r}: the directory at {c.url} returned an unusable "
                                 f"entry ({exc}); nothing was changed") from None

    def _search(self, conn: Any, base: str, flt: str, attributes: list[str]) -> list[tuple[str, dict[str, Any]]]:
        found = conn.extend.standard.paged_search(base, flt, search_scope=ldap3.SUBTREE, attributes=attributes,
                                                  paged_size=self.config.page_size, generator=True)
        return [(e["dn"], dict(e.get("attributes", {}))) for e in found if e.get("type") == "searchResEntry"]

    def _users(self, conn: Any) -> dict[str, tuple[str, str | None]]:
        """Normalized DN → (user name, team)."""
        c = self.config
        attrs = [c.user_attribute] + ([c.team_attribute] if c.team_attribute else [])
        users: dict[str, tuple[str, str | None]] = {}
        for dn, values in self._search(conn, c.user_base_dn, c.user_filter, attrs):
            user = _first(values, c.user_attribute)
            if user is None:
                raise PrincipalError(f"principal source {self.name!r}: user entry {dn!r} has no "
                                     f"{c.user_attribute!r} (user_attribute); nothing was changed")
            users[_norm(dn)] = (user, _first(values, c.team_attribute) if c.team_attribute else None)
            if len(users) > c.max_users:
                raise PrincipalError(f"principal source {self.name!r}: more than max_users={c.max_users} users "
                                     f"under {c.user_base_dn}; raise the limit if that is right. Nothing was changed")
        return users

    def _groups(self, conn: Any, users: dict[str, tuple[str, str | None]]) -> dict[str, list[str]]:
        """Normalized user DN → the names of its groups."""
        c = self.config
        by_name = {user: dn for dn, (user, _) in users.items()}
        member_of: dict[str, list[str]] = {}
        for dn, values in self._search(conn, c.group_base_dn, c.group_filter,
                                       [c.group_name_attribute, c.member_attribute]):
            group = _first(values, c.group_name_attribute)
            members = _values(values, c.member_attribute)
            if group is None:
                raise PrincipalError(f"principal source {self.name!r}: group entry {dn!r} has no "
                                     f"{c.group_name_attribute!r}; nothing was changed")
            if len(members) > c.max_group_members:
                raise PrincipalError(f"principal source {self.name!r}: group {group!r} has {len(members)} members, "
                                     f"more than max_group_members={c.max_group_members}; nothing was changed")
            for m in members:
                key = _norm(m) if c.member_is_dn else by_name.get(m)
                if key is not None and key in users:
                    member_of.setdefault(key, []).append(group)
        return member_of


def _norm(dn: str) -> str:
    """A DN compared loosely: case and spaces around separators do not matter."""
    return ",".join(part.strip().lower() for part in dn.split(","))
