"""Reconcile a principal source's complete listing with the principals it manages, in the caller's transaction.

:func:`plan` compares the listing with what is stored (``principals.managed_by = source``) and returns what to
add, change and remove; :func:`apply` writes it. A listed user that exists but is managed by another source is a
*conflict*: reported, never taken over; one that no source manages (added by hand, or at an OpenID Connect
sign-in) is a conflict too unless the entry sets ``adopt = true``, which makes the source its owner (its groups
become the directory's, and it is removed when the directory drops it). An unchanged listing gives an empty plan
and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from citeline.access.principals import PrincipalStore
from citeline.contracts.principal_source import Listing
from citeline.domain import Principal

__all__ = ["Plan", "apply", "lock", "managed", "plan", "put_managed"]

_LOCK = "SELECT pg_advisory_xact_lock(hashtext('citeline.principal_source'), hashtext(%s))"
_STORED = "SELECT user_id, groups, team, managed_by FROM principals WHERE user_id = ANY(%s) OR managed_by = %s"
_PUT = ("INSERT INTO principals (user_id, groups, team, tokens, managed_by) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (user_id) DO UPDATE SET groups = EXCLUDED.groups, team = EXCLUDED.team,"
        " tokens = EXCLUDED.tokens, managed_by = EXCLUDED.managed_by, updated_at = now()"
        " WHERE principals.managed_by = EXCLUDED.managed_by OR (principals.managed_by IS NULL AND %s)")
_STORED_ONLY = "SELECT user_id, groups, team, managed_by FROM principals WHERE user_id = ANY(%s)"
_MANAGED = "SELECT user_id, groups, team FROM principals WHERE managed_by = %s ORDER BY user_id"


@dataclass(frozen=True)
class Plan:
    """What a sync changes: principals to add, to update (groups or team differ), users to remove; conflicts."""

    added: tuple[Principal, ...] = ()
    updated: tuple[Principal, ...] = ()
    removed: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    revoked_keys: list[str] = field(default_factory=list)
    adopted: tuple[str, ...] = ()  # of ``updated``: principals no source managed, now this one's

    @property
    def empty(self) -> bool:
        return not (self.added or self.updated or self.removed)

    def summary(self) -> dict[str, object]:
        return {"added": [p.user for p in self.added], "updated": [p.user for p in self.updated],
                "removed": list(self.removed), "conflicts": list(self.conflicts),
                "revoked_keys": sorted(self.revoked_keys), "adopted": list(self.adopted)}


def lock(conn: psycopg.Connection, source: str) -> None:
    """One change per source at a time (held until the transaction ends)."""
    conn.execute(_LOCK, (source,))


def managed(conn: psycopg.Connection, source: str) -> list[Principal]:
    rows = conn.cursor(row_factory=dict_row).execute(_MANAGED, (source,)).fetchall()
    return [Principal(r["user_id"], tuple(r["groups"]), r["team"]) for r in rows]


def plan(conn: psycopg.Connection, source: str, listing: Listing, *, adopt: bool = False,
         only: set[str] | None = None) -> Plan:
    """Compare ``listing`` (everything ``source`` manages) with the stored principals (``adopt``: take over the
    listed principals no source manages). ``only``: the listing covers just these users (a SCIM change's), so
    only they are compared and only they may be removed."""
    if only is None:
        rows = conn.cursor(row_factory=dict_row).execute(_STORED, (listing.users(), source)).fetchall()
    else:
        rows = conn.cursor(row_factory=dict_row).execute(
            _STORED_ONLY, (sorted(only | set(listing.users())),)).fetchall()
    stored = {r["user_id"]: r for r in rows}
    added, updated, conflicts, adopted = [], [], [], []
    for p in listing.principals:
        row = stored.get(p.user)
        if row is None:
            added.append(p)
        elif row["managed_by"] is None and adopt:
            updated.append(p)
            adopted.append(p.user)
        elif row["managed_by"] != source:
            conflicts.append(p.user)
        elif (tuple(sorted(row["groups"])), row["team"]) != (p.groups, p.team):
            updated.append(p)
    listed = set(listing.users())
    removed = sorted(u for u, r in stored.items() if r["managed_by"] == source and u not in listed)
    return Plan(tuple(added), tuple(updated), tuple(removed), tuple(conflicts), adopted=tuple(adopted))


def put_managed(conn: psycopg.Connection, source: str, p: Principal, *, adopt: bool = False) -> bool:
    """Add ``p`` as managed by ``source`` or update it if ``source`` manages it (or no source does and ``adopt``);
    False if another owner has it."""
    return conn.execute(_PUT, (p.user, list(p.groups), p.team, list(p.tokens), source, adopt)).rowcount > 0


def apply(conn: psycopg.Connection, source: str, todo: Plan, store: PrincipalStore) -> Plan:
    """Write ``todo`` in ``conn`` (removals revoke the principal's keys); the plan with the revoked key ids."""
    for p in (*todo.added, *todo.updated):
        put_managed(conn, source, p, adopt=p.user in todo.adopted)
    revoked: list[str] = []
    for user in todo.removed:
        revoked.extend(store.delete(user, conn=conn) or [])
    return Plan(todo.added, todo.updated, todo.removed, todo.conflicts, revoked, todo.adopted)
