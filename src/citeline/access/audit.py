"""The audit log: one append-only, hash-chained row per answer and per admin action.

Each row's ``hash`` is ``HMAC-SHA256(key, prev_hash + canonical JSON of (id, at, kind, principal, team,
action, payload))`` and ``prev_hash`` is the previous row's ``hash`` (the first row's is 64 zeros). The key
lives outside the database (``audit.key`` / ``audit.key_file``; the default install generates
``<home>/audit.key``, mode 0600), so a database login, even the schema owner, can delete or edit rows but
cannot write a row, or re-chain the rows after an edit, so that they verify. Editing any field breaks the
row's own hash; deleting a row breaks the next row's link.

Rows written before the chain was keyed (up to ``audit_meta.legacy_until``, recorded by migration 0005)
carry the plain ``sha256(prev_hash + body)`` and still verify; :class:`VerifyReport` counts them. Every
row after that mark must carry the keyed hash.

A truncated *tail* leaves a valid shorter chain. :meth:`AuditLog.anchor` returns the signed head (last id,
its hash, the row count, the time; HMAC-signed with the key): keep it outside the database (``citeline
audit anchor``), and :meth:`AuditLog.verify` with ``anchor=`` checks that the chain still holds that head
unchanged, with as many rows up to it.

Appends take a transaction-scoped advisory lock so concurrent writers extend one chain. The application
roles may only ``INSERT`` and ``SELECT`` (see migration 0003).

Callers write the row *before* they return an answer; if :meth:`AuditLog.append` fails the answer is
withheld (fail closed). Concurrent appends share one transaction (group commit, see
:mod:`citeline.batching`), so a busy server pays one WAL flush per batch rather than per answer. Admin
actions use :meth:`AuditLog.append_in` instead: the row is written in the action's own transaction, so the
change and its audit row commit together or not at all.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from citeline.batching import Batcher
from citeline.db import Database
from citeline.errors import AuditError, ConfigError
from citeline.tracing import current_request_id

__all__ = ["AuditLog", "AuditRecord", "VerifyReport", "load_key"]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_LOCK_SPACE = 0x617564  # "aud": the advisory-lock key space of audit appends
_MIN_KEY_CHARS = 32
_ANCHOR_FIELDS = ("version", "namespace", "id", "hash", "rows", "at", "key")


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
    head_id: int = 0
    legacy_rows: int = 0  # rows from before the chain was keyed (plain sha256)
    anchor_id: int | None = None  # the anchor's head row, when one was checked

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "head": self.head, "head_id": self.head_id,
                "legacy_rows": self.legacy_rows, "anchor_id": self.anchor_id, "problems": list(self.problems)}


def load_key(path: Path, *, create: bool = True) -> bytes:
    """The chain key kept in ``path``; with ``create``, a new random key is written there (mode 0600) first.

    The file holds at least 32 characters (the generated one: 64 hex digits). Two processes creating it at
    once agree on one key (the file appears atomically, with its content, or not at all).
    """
    path = Path(path)
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # fails if another process made it first: theirs wins
        finally:
            tmp.unlink()
        log.info("created the audit chain key %s (keep a copy: without it the chain cannot be verified)", path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit key file {path} ({exc.strerror}): set audit.key_file to a "
                          "readable file, or audit.key") from exc
    if len(text) < _MIN_KEY_CHARS:
        raise ConfigError(f"the audit key in {path} is shorter than {_MIN_KEY_CHARS} characters: use e.g. "
                          "`openssl rand -hex 32`")
    if path.stat().st_mode & 0o077:
        log.warning("the audit key file %s is readable by other users: chmod 600 it", path)
    return text.encode()


def key_fingerprint(key: bytes) -> str:
    """A public name for a key (which key signed an anchor); reveals nothing about the key."""
    return hmac.new(key, b"citeline audit key fingerprint", hashlib.sha256).hexdigest()[:16]


def _body(id_: int, at: datetime, kind: str, principal: str | None, team: str | None, action: str,
          payload: dict[str, Any]) -> str:
    return json.dumps([id_, at.astimezone(UTC).isoformat(timespec="microseconds"), kind, principal, team, action,
                       payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain_digest(prev_hash: str, body: str) -> str:
    """The unkeyed hash of rows written before migration 0005 (anyone can compute it)."""
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _keyed_digest(key: bytes, prev_hash: str, body: str) -> str:
    return hmac.new(key, (prev_hash + body).encode(), hashlib.sha256).hexdigest()


def _normalise(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as it will read back from jsonb (so the stored hash verifies), with the request id of the
    request or answer that writes it (``request_id``, :mod:`citeline.tracing`), hashed with the rest."""
    rid = current_request_id()
    if rid is not None and "request_id" not in payload:
        payload = {**payload, "request_id": rid}
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


@dataclass(frozen=True)
class _Entry:
    kind: str
    action: str
    principal: str | None
    team: str | None
    payload: dict[str, Any]


class AuditLog:
    """The chain in ``db``, written and verified with ``key`` (see :func:`load_key`)."""

    def __init__(self, db: Database, key: bytes) -> None:
        if len(key) < _MIN_KEY_CHARS:
            raise ConfigError(f"the audit key must be at least {_MIN_KEY_CHARS} bytes")
        self.db = db
        self._key = key
        self._batcher: Batcher[_Entry, AuditRecord] = Batcher(self._write)

    def __repr__(self) -> str:  # never the key
        return f"AuditLog(namespace={self.db.namespace!r}, key={key_fingerprint(self._key)})"

    @property
    def key_fingerprint(self) -> str:
        return key_fingerprint(self._key)

    def append(self, kind: str, action: str, *, principal: str | None, team: str | None = None,
               payload: dict[str, Any] | None = None) -> AuditRecord:
        """Append one row to the chain; :class:`AuditError` if it cannot be written.

        Rows appended concurrently are written in one transaction (one WAL flush) by whichever caller
        arrived first; every caller returns only after its row has committed.
        """
        return self._batcher(_Entry(kind, action, principal, team, _normalise(payload or {})))

    def append_in(self, conn: psycopg.Connection, kind: str, action: str, *, principal: str | None,
                  team: str | None = None, payload: dict[str, Any] | None = None) -> AuditRecord:
        """Append one row inside the caller's transaction (an admin action): both commit, or neither.

        :class:`AuditError` if the row cannot be written; the caller's transaction is then aborted.
        """
        entry = _Entry(kind, action, principal, team, _normalise(payload or {}))
        try:
            with conn.transaction():  # a savepoint: the error is reported before the caller's commit
                return self._insert(conn, [entry])[0]
        except psycopg.Error as exc:
            raise AuditError(f"cannot write the audit log ({type(exc).__name__}: {exc}); nothing was changed. "
                             "Check that the database is reachable and citeline_writer may INSERT into audit_log"
                             ) from exc

    def _write(self, entries: list[_Entry]) -> list[AuditRecord]:
        try:
            # Two round trips per batch (pipeline mode): BEGIN + lock + chain head + ids and times, then
            # the inserts + COMMIT.
            with self.db.writer(pipeline=True) as conn:
                return self._insert(conn, entries)
        except psycopg.Error as exc:
            raise AuditError(f"cannot write the audit log ({type(exc).__name__}: {exc}); the answer was withheld. "
                             "Check that the database is reachable and citeline_writer may INSERT into audit_log"
                             ) from exc

    def _insert(self, conn: psycopg.Connection, entries: list[_Entry]) -> list[AuditRecord]:
        # The head is read by a statement after the lock's, so it sees the last row committed by whoever
        # held the lock before.
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_LOCK_SPACE,))
        slots = conn.cursor(row_factory=dict_row).execute(
            "SELECT (SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1) AS head,"
            " nextval(pg_get_serial_sequence('audit_log', 'id')) AS id,"
            " date_trunc('microseconds', clock_timestamp()) AS at FROM generate_series(1, %s) ORDER BY 2",
            (len(entries),)).fetchall()
        prev = slots[0]["head"] or GENESIS
        rows, out = [], []
        for e, slot in zip(entries, slots, strict=True):
            id_, at = slot["id"], slot["at"]
            digest = _keyed_digest(self._key, prev, _body(id_, at, e.kind, e.principal, e.team, e.action, e.payload))
            rows.append((id_, at, e.kind, e.principal, e.team, e.action, json.dumps(e.payload), prev, digest))
            out.append(AuditRecord(id_, at, e.kind, e.principal, e.team, e.action, e.payload, prev, digest))
            prev = digest
        with conn.cursor() as cur:  # executemany pipelines the inserts: one round trip
            cur.executemany(
                "INSERT INTO audit_log (id, at, kind, principal, team, action, payload, prev_hash, hash)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)", rows)
        return out

    def records(self, *, since: datetime | None = None, kind: str | None = None) -> Iterator[AuditRecord]:
        with self.db.writer() as conn:
            cur = conn.cursor(row_factory=class_row(AuditRecord)).execute(
                "SELECT id, at, kind, principal, team, action, payload, prev_hash, hash FROM audit_log"
                " WHERE (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s) ORDER BY id", {"since": since, "kind": kind})
            yield from cur

    def _legacy_until(self) -> int:
        with self.db.writer() as conn:
            row = conn.cursor(row_factory=dict_row).execute("SELECT legacy_until FROM audit_meta").fetchone()
        return int(row["legacy_until"]) if row else 0

    def anchor(self) -> dict[str, Any]:
        """The signed head of the chain, to keep outside the database (see :meth:`verify`)."""
        with self.db.writer() as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                "SELECT (SELECT count(*) FROM audit_log) AS row_count, id, hash FROM audit_log ORDER BY id DESC LIMIT 1"
            ).fetchone()
        count, id_, head = (row["row_count"], row["id"], row["hash"]) if row else (0, 0, GENESIS)
        out: dict[str, Any] = {"version": 1, "namespace": self.db.namespace, "id": int(id_), "hash": head,
                               "rows": int(count), "at": datetime.now(UTC).isoformat(),
                               "key": key_fingerprint(self._key)}
        out["signature"] = self._sign(out)
        return out

    def _sign(self, anchor: Mapping[str, Any]) -> str:
        body = json.dumps({k: anchor.get(k) for k in _ANCHOR_FIELDS}, sort_keys=True, separators=(",", ":"))
        return hmac.new(self._key, b"citeline audit anchor\0" + body.encode(), hashlib.sha256).hexdigest()

    def verify(self, *, anchor: Mapping[str, Any] | None = None) -> VerifyReport:
        """Recompute the chain; every broken link, edited or forged row is one problem.

        With ``anchor`` (from :meth:`anchor`), also check its signature and that the chain still holds
        the anchored head unchanged with as many rows up to it (a truncated tail is caught here).
        """
        legacy_until = self._legacy_until()
        problems: list[str] = []
        prev, n, legacy, head_id, keyed, keyed_bad = GENESIS, 0, 0, 0, 0, 0
        anchor_id = int(anchor["id"]) if anchor is not None and isinstance(anchor.get("id"), int) else None
        upto_anchor, anchor_row = 0, None
        for rec in self.records():
            n += 1
            if rec.prev_hash != prev:
                problems.append(f"row {rec.id}: prev_hash does not match the row before it (a row was deleted "
                                "or inserted out of order)")
            body = _body(rec.id, rec.at, rec.kind, rec.principal, rec.team, rec.action, rec.payload)
            plain = _plain_digest(rec.prev_hash, body)
            if rec.id <= legacy_until:
                legacy += 1
                if plain != rec.hash:
                    problems.append(f"row {rec.id}: contents do not match its hash (the row was edited)")
            else:
                keyed += 1
                if not hmac.compare_digest(_keyed_digest(self._key, rec.prev_hash, body), rec.hash):
                    keyed_bad += 1
                    problems.append(
                        f"row {rec.id}: carries an unkeyed hash where the chain is keyed (written or re-chained by "
                        "a database login, not by citeline)" if plain == rec.hash else
                        f"row {rec.id}: contents do not match its keyed hash (the row was edited or forged, or "
                        "written with another audit key)")
            if anchor_id is not None and rec.id <= anchor_id:
                upto_anchor += 1
                if rec.id == anchor_id:
                    anchor_row = rec
            prev, head_id = rec.hash, rec.id
        if keyed and keyed_bad == keyed:
            problems.append(f"no row after the legacy mark verifies with this key (fingerprint "
                            f"{key_fingerprint(self._key)}): if nothing was tampered with, audit.key / "
                            "audit.key_file is not the key citeline writes with")
        if anchor is not None:
            problems.extend(self._anchor_problems(anchor, anchor_row, upto_anchor, head_id))
        return VerifyReport(n, not problems, prev, tuple(problems), head_id, legacy, anchor_id)

    def _anchor_problems(self, anchor: Mapping[str, Any], row: AuditRecord | None, upto: int,
                         head_id: int) -> list[str]:
        if not isinstance(anchor.get("id"), int) or not isinstance(anchor.get("rows"), int):
            return ["the anchor is malformed (no integer id and rows): write a new one with `citeline audit anchor`"]
        if not hmac.compare_digest(str(anchor.get("signature", "")), self._sign(anchor)):
            return [f"the anchor's signature does not match (the anchor was edited, or signed with another key "
                    f"than this one, fingerprint {key_fingerprint(self._key)}); it proves nothing"]
        if anchor.get("namespace") != self.db.namespace:
            return [f"the anchor is for namespace {anchor.get('namespace')!r}, not {self.db.namespace!r}"]
        id_, problems = anchor["id"], []
        if id_ and row is None:
            problems.append(f"row {id_} (the anchored head, {anchor['rows']} rows at {anchor.get('at')}) is "
                            f"missing: the chain was truncated or rows deleted (its head is now row {head_id})")
        elif row is not None and row.hash != anchor.get("hash"):
            problems.append(f"row {id_} (the anchored head) no longer has the anchored hash: the chain up to it "
                            "was rewritten")
        if row is not None and upto != anchor["rows"]:
            problems.append(f"{upto} rows up to row {id_}, the anchor recorded {anchor['rows']}: rows were "
                            "deleted or inserted before the anchored head")
        return problems

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
