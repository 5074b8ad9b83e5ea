"""The audit log: one append-only, hash-chained row per answer and per admin action.

Each row's ``hash`` is ``sha256(prev_hash + canonical JSON of (id, at, kind, principal, team, action,
payload))`` and ``prev_hash`` is the previous row's ``hash`` (the first row's is 64 zeros). Editing any
field of a row breaks its own hash; deleting a row breaks the next row's link. Appends take a
transaction-scoped advisory lock so concurrent writers extend one chain. The application roles may only
``INSERT`` and ``SELECT`` (see migration 0003); :meth:`AuditLog.verify` detects what a database owner
changed behind citeline's back. A truncated *tail* leaves a valid shorter chain: record
:attr:`VerifyReport.head` somewhere else (a log shipper, a ticket) to detect that too.

Callers write the row *before* they return an answer; if :meth:`AuditLog.append` fails the answer is
withheld (fail closed). Concurrent appends share one transaction (group commit, see
:mod:`citeline.batching`), so a busy server pays one WAL flush per batch rather than per answer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from citeline.batching import Batcher
from citeline.db import Database
from citeline.errors import AuditError

__all__ = ["AuditLog", "AuditRecord", "VerifyReport"]

GENESIS = "0" * 64
_LOCK_SPACE = 0x617564  # "aud": the advisory-lock key space of audit appends


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    kind: str
    principal: str | None
    team: str | None
    action: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.astimezone(UTC).isoformat(), "kind": self.kind,
                "principal": self.principal, "team": self.team, "action": self.action,
                "payload": self.payload, "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class VerifyReport:
    rows: int
    ok: bool
    head: str
    problems: tuple[str, ...]


def _digest(prev_hash: str, id_: int, at: datetime, kind: str, principal: str | None, team: str | None,
            action: str, payload: dict[str, Any]) -> str:
    body = json.dumps([id_, at.astimezone(UTC).isoformat(timespec="microseconds"), kind, principal, team, action,
                       payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _normalise(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as it will read back from jsonb (so the stored hash verifies)."""
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


@dataclass(frozen=True)
class _Entry:
    kind: str
    action: str
    principal: str | None
    team: str | None
    payload: dict[str, Any]


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._batcher: Batcher[_Entry, AuditRecord] = Batcher(self._write)

    def append(self, kind: str, action: str, *, principal: str | None, team: str | None = None,
               payload: dict[str, Any] | None = None) -> AuditRecord:
        """Append one row to the chain; :class:`AuditError` if it cannot be written.

        Rows appended concurrently are written in one transaction (one WAL flush) by whichever caller
        arrived first; every caller returns only after its row has committed.
        """
        return self._batcher(_Entry(kind, action, principal, team, _normalise(payload or {})))

    def _write(self, entries: list[_Entry]) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        try:
            # Two round trips per batch (pipeline mode): BEGIN + lock + chain head + ids and times, then
            # the inserts + COMMIT. The head is read by a statement after the lock's, so it sees the last
            # row committed by whoever held the lock before.
            with self.db.writer(pipeline=True) as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_LOCK_SPACE,))
                slots = conn.execute(
                    "SELECT (SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1),"
                    " nextval(pg_get_serial_sequence('audit_log', 'id')) AS id,"
                    " date_trunc('microseconds', clock_timestamp()) FROM generate_series(1, %s) ORDER BY 2",
                    (len(entries),)).fetchall()
                prev = slots[0][0] or GENESIS
                rows = []
                for e, (_, id_, at) in zip(entries, slots, strict=True):
                    digest = _digest(prev, id_, at, e.kind, e.principal, e.team, e.action, e.payload)
                    rows.append((id_, at, e.kind, e.principal, e.team, e.action, json.dumps(e.payload), prev, digest))
                    out.append(AuditRecord(id_, at, e.kind, e.principal, e.team, e.action, e.payload, prev, digest))
                    prev = digest
                with conn.cursor() as cur:  # executemany pipelines the inserts: one round trip
                    cur.executemany(
                        "INSERT INTO audit_log (id, at, kind, principal, team, action, payload, prev_hash, hash)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)", rows)
        except psycopg.Error as exc:
            raise AuditError(f"cannot write the audit log ({type(exc).__name__}: {exc}); the answer was withheld. "
                             "Check that the database is reachable and citeline_writer may INSERT into audit_log"
                             ) from exc
        return out

    def records(self, *, since: datetime | None = None, kind: str | None = None) -> Iterator[AuditRecord]:
        with self.db.writer() as conn:
            cur = conn.execute(
                "SELECT id, at, kind, principal, team, action, payload, prev_hash, hash FROM audit_log"
                " WHERE (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s) ORDER BY id", {"since": since, "kind": kind})
            for row in cur:
                yield AuditRecord(*row)

    def verify(self) -> VerifyReport:
        """Recompute the chain; every broken link or edited row is one problem."""
        problems: list[str] = []
        prev, n = GENESIS, 0
        for rec in self.records():
            n += 1
            if rec.prev_hash != prev:
                problems.append(f"row {rec.id}: prev_hash does not match the row before it (a row was deleted "
                                "or inserted out of order)")
            expected = _digest(rec.prev_hash, rec.id, rec.at, rec.kind, rec.principal, rec.team, rec.action,
                               rec.payload)
            if expected != rec.hash:
                problems.append(f"row {rec.id}: contents do not match its hash (the row was edited)")
            prev = rec.hash
        return VerifyReport(n, not problems, prev, tuple(problems))

    def export(self, fmt: str, *, since: datetime | None = None) -> Iterator[str]:
        """Rows as JSON lines or CSV text (the payload as a JSON column)."""
        if fmt not in ("jsonl", "csv"):
            raise AuditError(f"unknown export format {fmt!r}: use jsonl or csv")
        fields = ["id", "at", "kind", "principal", "team", "action", "payload", "prev_hash", "hash"]
        if fmt == "csv":
            yield ",".join(fields) + "\r\n"
        for rec in self.records(since=since):
            d = rec.as_dict()
            if fmt == "jsonl":
                yield json.dumps(d, ensure_ascii=False) + "\n"
            else:
                buf = io.StringIO()
                d["payload"] = json.dumps(d["payload"], sort_keys=True, ensure_ascii=False)
                csv.writer(buf).writerow([d[f] for f in fields])
                yield buf.getvalue()
