"""Reading the audit log back: one row by id, and rows by filter (principal, kind, action, time range, request
id), newest first, a page at a time. Read-only; the chain and its writes are :mod:`citeline.access.audit`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from citeline.access.audit import AuditRecord
from citeline.db import Database

__all__ = ["AuditFilter", "AuditPage", "audit_row", "search_audit"]

_COLUMNS = "id, at, kind, principal, team, action, payload, prev_hash, hash"
_ROW = f"SELECT {_COLUMNS} FROM audit_log WHERE id = %s"
# every filter is a parameter; NULL means "any" (no SQL is built from the caller's text)
_SEARCH = (
    f"SELECT {_COLUMNS} FROM audit_log"
    " WHERE (%(principal)s::text IS NULL OR principal = %(principal)s)"
    " AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
    " AND (%(action)s::text IS NULL OR action = %(action)s)"
    " AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
    " AND (%(until)s::timestamptz IS NULL OR at < %(until)s)"
    " AND (%(request_id)s::text IS NULL OR payload->>'request_id' = %(request_id)s)"
    " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
    " ORDER BY id DESC LIMIT %(limit)s")


@dataclass(frozen=True)
class AuditFilter:
    """Which rows: every field left ``None`` matches all; ``before`` is the paging cursor (an id)."""

    principal: str | None = None
    kind: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None
    before: int | None = None


@dataclass(frozen=True)
class AuditPage:
    rows: list[AuditRecord]
    next_before: int | None  # pass as ``before`` for the next (older) page; None: this was the last page


def search_audit(db: Database, where: AuditFilter, *, limit: int = 50) -> AuditPage:
    """The rows matching ``where``, newest first, at most ``limit`` (1 to 1000)."""
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit must be 1 to 1000, not {limit}")
    params = {**where.__dict__, "limit": limit + 1}
    with db.writer() as conn:
        rows = conn.cursor(row_factory=class_row(AuditRecord)).execute(_SEARCH, params).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(rows, rows[-1].id if more else None)


def audit_row(db: Database, row_id: int) -> AuditRecord | None:
    with db.writer() as conn:
        return conn.cursor(row_factory=class_row(AuditRecord)).execute(_ROW, (row_id,)).fetchone()
