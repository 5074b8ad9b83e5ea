"""SCIM 2.0 provisioning (``cl.scim``): each pushed change, the principals it implies and its audit row, together.

Every write (create, replace, patch, delete of a User or Group) runs in one transaction under the SCIM source's
lock: the SCIM resource changes, the principals the source manages are reconciled with what is now stored (a
user made inactive or deleted is removed and its API keys revoked; a membership change updates groups), and one
audit row records both. A refused request (:class:`citeline.errors.ScimError`) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from citeline.access.audit import AuditLog
from citeline.access.principals import PrincipalStore
from citeline.db import Database
from citeline.errors import ConfigError
from citeline.identity import directory
from citeline.identity.scim import ScimConfig, ScimSource, ScimStore
from citeline.identity.scim_patch import parse_eq_filter, patch
from citeline.operations.admin import audited
from citeline.operations.principal_sources import PrincipalSources

__all__ = ["Scim"]

_Row = dict[str, Any]


class Scim:
    """The SCIM endpoint's operations over the ``[[principal_sources]]`` entry of kind ``scim``."""

    def __init__(self, db: Database, audit: Callable[[], AuditLog], sources: PrincipalSources) -> None:
        self._db = db
        self._audit = audit
        entries = [e for e in sources.configured() if e.kind == "scim"]
        if len(entries) != 1:
            raise ConfigError("SCIM needs exactly one [[principal_sources]] table with kind = \"scim\" "
                              f"(found {len(entries)})")
        self.name = entries[0].name
        self._adopt = entries[0].adopt
        self.source: ScimSource = sources.build(self.name)  # type: ignore[assignment]
        self.config: ScimConfig = self.source.config
        self._store = ScimStore(self.config)
        self._principals = PrincipalStore(db)

    def authenticate(self, presented: str | None) -> bool:
        """True when the bearer token is the configured one (constant time)."""
        return self.source.authenticate(presented)

    # -- reads --------------------------------------------------------------------------------------
    def _page(self, start: int | None, count: int | None) -> tuple[int, int]:
        return max(1, start or 1), min(max(0, self.config.max_results if count is None else count),
                                       self.config.max_results)

    def get_user(self, user_id: str) -> _Row:
        with self._db.writer() as conn:
            return self._store.get_user(conn, user_id)

    def list_users(self, flt: str | None, start: int | None, count: int | None) -> tuple[int, list[_Row]]:
        parsed = parse_eq_filter(flt, ("userName", "externalId")) if flt else None
        with self._db.writer() as conn:
            return self._store.list_users(conn, parsed, *self._page(start, count))

    def get_group(self, group_id: str) -> _Row:
        with self._db.writer() as conn:
            return self._store.get_group(conn, group_id)

    def list_groups(self, flt: str | None, start: int | None, count: int | None) -> tuple[int, list[_Row]]:
        parsed = parse_eq_filter(flt, ("displayName", "externalId")) if flt else None
        with self._db.writer() as conn:
            return self._store.list_groups(conn, parsed, *self._page(start, count))

    # -- writes: each with the principals it implies and its audit row --------------------------------
    def _change(self, action: str, actor: str, write: Callable[[psycopg.Connection], _Row | str],
                before: Callable[[psycopg.Connection], list[str]] = lambda c: []) -> _Row | str:
        """``write`` in one transaction with the principals of the users it touches (``before``: their ids
        before it, the written user or group's members after it) reconciled, and one audit row."""
        with audited(self._db, self._audit) as (conn, audit):
            directory.lock(conn, self.name)
            ids = before(conn)
            names = self._store.names(conn, ids)
            result = write(conn)
            if isinstance(result, dict):
                ids = sorted({*ids, *([result["id"]] if "user_name" in result else
                                      [m["value"] for m in result.get("members", ())])})
            names |= self._store.names(conn, ids)
            todo = directory.plan(conn, self.name, self._store.listing(conn, ids), adopt=self._adopt, only=names)
            done = directory.apply(conn, self.name, todo, self._principals)
            what = result if isinstance(result, str) else result.get("user_name") or result.get("display_name")
            audit.append_in(conn, "admin", action, principal=actor,
                            payload={"source": self.name, "resource": what, **done.summary()})
        return result

    def _members(self, group_id: str) -> Callable[[psycopg.Connection], list[str]]:
        return lambda c: [m["value"] for m in self._store.get_group(c, group_id)["members"]]

    def create_user(self, resource: _Row, *, actor: str) -> _Row:
        return self._change("scim.user.create", actor, lambda c: self._store.put_user(c, resource))  # type: ignore[return-value]

    def replace_user(self, user_id: str, resource: _Row, *, actor: str) -> _Row:
        return self._change("scim.user.replace", actor,  # type: ignore[return-value]
                            lambda c: self._store.put_user(c, resource, user_id), lambda c: [user_id])

    def patch_user(self, user_id: str, operations: list[dict[str, Any]], *, actor: str,
                   check: Callable[[_Row], _Row] = dict) -> _Row:
        """Apply PATCH ``operations``; ``check`` validates the patched resource (the wire type's owner, in serving)."""
        def write(c: psycopg.Connection) -> _Row:
            current = self._store.get_user(c, user_id)
            base = {**current["resource"], "userName": current["user_name"]}  # "active" as stored, if it was sent
            return self._store.put_user(c, check(patch(base, operations)), user_id)
        return self._change("scim.user.patch", actor, write, lambda c: [user_id])  # type: ignore[return-value]

    def delete_user(self, user_id: str, *, actor: str) -> None:
        self._change("scim.user.delete", actor, lambda c: self._store.delete_user(c, user_id), lambda c: [user_id])

    def create_group(self, resource: _Row, *, actor: str) -> _Row:
        return self._change("scim.group.create", actor, lambda c: self._store.put_group(c, resource))  # type: ignore[return-value]

    def replace_group(self, group_id: str, resource: _Row, *, actor: str) -> _Row:
        return self._change("scim.group.replace", actor,  # type: ignore[return-value]
                            lambda c: self._store.put_group(c, resource, group_id), self._members(group_id))

    def patch_group(self, group_id: str, operations: list[dict[str, Any]], *, actor: str,
                    check: Callable[[_Row], _Row] = dict) -> _Row:
        def write(c: psycopg.Connection) -> _Row:
            g = self._store.get_group(c, group_id)
            base = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": g["display_name"],
                    "members": [{"value": m["value"], "display": m["display"]} for m in g["members"]],
                    **({"externalId": g["external_id"]} if g["external_id"] else {})}
            return self._store.put_group(c, check(patch(base, operations)), group_id)
        return self._change("scim.group.patch", actor, write, self._members(group_id))  # type: ignore[return-value]

    def delete_group(self, group_id: str, *, actor: str) -> None:
        self._change("scim.group.delete", actor, lambda c: self._store.delete_group(c, group_id),
                     self._members(group_id))
