"""Feedback on answers, stored against their audit rows: :class:`Feedback` (``cl.feedback``).

Only the principal who asked may rate an answer (the audit row's principal must be the caller's): an id
that names no answer and an id that names someone else's answer get the same ``None``, so a caller learns
nothing about other principals' answers. Feedback is kept per answer (giving it again replaces it) in the
``feedback`` table (migration 0012) with the answer's team and model (the adapter's served name, which holds
its version), and every time it is given an audit row (kind ``feedback``, action ``feedback.give``)
commits in the same transaction.

:meth:`Feedback.rated_answers` and :meth:`Feedback.evidence` are what the training data builder
(:mod:`citeline.lora.feedback_data`) reads: the rated answers of a team with their questions and the chunk ids
shown, and the evidence those chunks hold now, with which of them *every* current member of the team may
still see (checked in PostgreSQL, as each member, through row-level security).

:meth:`Feedback.recent` lists the latest feedback rows (newest first, by team, model and rating) with the
question each rated answer asked, for the admin API's ``GET /v1/admin/feedback``: reading it changes nothing.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row

from citeline.access.audit import AuditLog
from citeline.db import Database
from citeline.domain import Principal
from citeline.lora.feedback_data import EvidenceChunk, RatedAnswer
from citeline.operations.admin import audited

__all__ = ["MAX_CORRECTION", "MAX_LISTED", "MAX_REASON", "Feedback", "FeedbackEntry", "FeedbackRecord",
           "FeedbackSummary", "TeamEvidence"]

MAX_REASON = 2000  # characters (the table's CHECK says the same)
MAX_CORRECTION = 16000
MAX_LISTED = 500  # rows :meth:`Feedback.recent` returns at most

_ANSWER_ROW = ("SELECT id, principal, team, payload ->> 'model' AS model FROM audit_log"
               " WHERE id = %s AND kind = 'ask' AND action = 'answer'")
_UPSERT = ("INSERT INTO feedback (audit_id, principal, team, model, rating, reason, correction)"
           " VALUES (%(audit_id)s, %(principal)s, %(team)s, %(model)s, %(rating)s, %(reason)s, %(correction)s)"
           " ON CONFLICT (audit_id) DO UPDATE SET rating = EXCLUDED.rating, reason = EXCLUDED.reason,"
           " correction = EXCLUDED.correction, updated_at = now()"
           " RETURNING id, audit_id, principal, team, model, rating, reason, correction, created_at, updated_at")
_REPORT = ("SELECT team, model, count(*) FILTER (WHERE rating = 1) AS up, count(*) FILTER (WHERE rating = -1) AS down,"
           " count(correction) AS corrected, max(updated_at) AS last_at FROM feedback"
           " WHERE (%(team)s::text IS NULL OR team = %(team)s) GROUP BY team, model ORDER BY team NULLS FIRST, model")
_RATED = ("SELECT f.audit_id, f.team, f.model, f.rating, f.reason, f.correction, a.payload,"
          " e.answer AS streamed_answer FROM feedback f JOIN audit_log a ON a.id = f.audit_id"
          " LEFT JOIN LATERAL (SELECT payload ->> 'answer' AS answer FROM audit_log"
          "   WHERE action = 'answer.end' AND (payload ->> 'answer_audit_id')::bigint = f.audit_id"
          "   ORDER BY id LIMIT 1) e ON true"
          " WHERE f.team = %s ORDER BY f.audit_id")
_RECENT = ("SELECT f.id, f.audit_id, f.principal, f.team, f.model, f.rating, f.reason, f.correction, f.created_at,"
           " f.updated_at, coalesce(a.payload ->> 'question', '') AS question"
           " FROM feedback f LEFT JOIN audit_log a ON a.id = f.audit_id"
           " WHERE (%(team)s::text IS NULL OR f.team = %(team)s) AND (%(model)s::text IS NULL OR f.model = %(model)s)"
           " AND (%(rating)s::smallint IS NULL OR f.rating = %(rating)s)"
           " ORDER BY f.updated_at DESC, f.id DESC LIMIT %(limit)s")
_MEMBERS = "SELECT user_id FROM principals WHERE team = %s ORDER BY user_id"
_VISIBLE = "SELECT id FROM chunks WHERE id = ANY(%s)"  # as a member: row-level security filters it
_CHUNKS = ("SELECT c.id AS chunk_id, c.document_id, d.title, d.url, c.text FROM chunks c"
           " JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)")


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    audit_id: int
    principal: str
    team: str | None
    model: str
    rating: int  # 1 up, -1 down
    reason: str
    correction: str | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "audit_id": self.audit_id, "principal": self.principal, "team": self.team,
                "model": self.model, "rating": "up" if self.rating > 0 else "down", "reason": self.reason,
                "correction": self.correction, "created_at": self.created_at.astimezone(UTC).isoformat(),
                "updated_at": self.updated_at.astimezone(UTC).isoformat()}


@dataclass(frozen=True)
class FeedbackEntry(FeedbackRecord):
    """A feedback row with the question of the answer it rates (from the answer's audit row)."""

    question: str

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "question": self.question}


@dataclass(frozen=True)
class FeedbackSummary:
    """Feedback on one team's answers from one model (the base, or an adapter version's served name)."""

    team: str | None
    model: str
    up: int
    down: int
    corrected: int
    last_at: datetime | None

    @property
    def total(self) -> int:
        return self.up + self.down

    @property
    def up_share(self) -> float:
        return self.up / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"team": self.team, "model": self.model, "up": self.up, "down": self.down, "total": self.total,
                "corrected": self.corrected, "up_share": round(self.up_share, 4),
                "last_at": self.last_at.astimezone(UTC).isoformat() if self.last_at else None}


@dataclass(frozen=True)
class TeamEvidence:
    """The evidence that still exists for a set of chunk ids, and which of it every member may see."""

    members: tuple[str, ...]
    chunks: dict[int, EvidenceChunk]  # chunk id -> what it holds now (chunks are replaced, never edited)
    visible: frozenset[int]  # chunk ids that every member sees (none when the team has no members)


def _check(rating: int, reason: str, correction: str | None) -> None:
    if rating not in (1, -1):
        raise ValueError(f"rating must be 1 (up) or -1 (down), not {rating!r}")
    if len(reason) > MAX_REASON:
        raise ValueError(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    if correction is not None and not 1 <= len(correction) <= MAX_CORRECTION:
        raise ValueError(f"the correction is {len(correction)} characters; 1 to {MAX_CORRECTION}")
    if "\x00" in reason or (correction is not None and "\x00" in correction):
        raise ValueError("the reason and the correction may not contain NUL bytes")


class Feedback:
    """Feedback on answers: given by the asker, audited, reported per team and model."""

    def __init__(self, db: Database, audit: Callable[[], AuditLog]) -> None:
        self._db = db
        self._audit = audit

    def give(self, audit_id: int, principal: Principal, *, rating: int, reason: str = "",
             correction: str | None = None) -> FeedbackRecord | None:
        """Rate answer ``audit_id`` (its ``ask``/``answer`` audit row) as ``principal``, who must have asked it.

        ``None``: no such answer *of this principal* (someone else's answer gets the same). A blank
        ``correction`` counts as none. The feedback and its audit row commit together, or neither.
        """
        reason = reason.strip()
        correction = correction.strip() if correction is not None and correction.strip() else None
        _check(rating, reason, correction)
        with audited(self._db, self._audit) as (conn, audit):
            row = conn.cursor(row_factory=dict_row).execute(_ANSWER_ROW, (audit_id,)).fetchone()
            if row is None or row["principal"] != principal.user:
                return None
            params = {"audit_id": audit_id, "principal": principal.user, "team": row["team"],
                      "model": row["model"] or "", "rating": rating, "reason": reason, "correction": correction}
            saved = conn.cursor(row_factory=dict_row).execute(_UPSERT, params).fetchone()
            assert saved is not None
            audit.append_in(conn, "feedback", "feedback.give", principal=principal.user, team=row["team"], payload={
                "answer_audit_id": audit_id, "model": params["model"], "rating": "up" if rating > 0 else "down",
                "reason": reason, "correction": correction})
        return FeedbackRecord(**saved)

    def report(self, *, team: str | None = None) -> builtins.list[FeedbackSummary]:
        """Up and down votes and corrections per team and model (``team``: that team's only)."""
        with self._db.writer() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(_REPORT, {"team": team}).fetchall()
        return [FeedbackSummary(r["team"], r["model"], int(r["up"]), int(r["down"]), int(r["corrected"]),
                                r["last_at"]) for r in rows]

    def recent(self, *, team: str | None = None, model: str | None = None, rating: int | None = None,
               limit: int = 50) -> builtins.list[FeedbackEntry]:
        """The latest feedback (newest change first), each with its answer's question; ``team``, ``model``
        (an adapter's served name) and ``rating`` (1 up, -1 down) narrow it; at most ``limit`` rows (1 to
        :data:`MAX_LISTED`)."""
        if rating is not None and rating not in (1, -1):
            raise ValueError(f"rating must be 1 (up), -1 (down) or None (both), not {rating!r}")
        if not 1 <= limit <= MAX_LISTED:
            raise ValueError(f"limit must be 1 to {MAX_LISTED}, not {limit}")
        params = {"team": team, "model": model, "rating": rating, "limit": limit}
        with self._db.writer() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(_RECENT, params).fetchall()
        return [FeedbackEntry(**r) for r in rows]

    def rated_answers(self, team: str) -> builtins.list[RatedAnswer]:
        """Every rated answer of ``team`` with its question, answer text and the chunks shown (oldest first)."""
        with self._db.writer() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(_RATED, (team,)).fetchall()
        out = []
        for r in rows:
            payload = r["payload"]
            shown = sorted(payload.get("shown") or [], key=lambda s: int(s["n"]))
            answer = payload.get("answer") if payload.get("answer") is not None else r["streamed_answer"]
            out.append(RatedAnswer(
                audit_id=int(r["audit_id"]), team=r["team"], model=r["model"], rating=int(r["rating"]),
                reason=r["reason"], correction=r["correction"], question=str(payload.get("question", "")),
                answer=answer, chunk_ids=tuple(int(s["chunk_id"]) for s in shown),
                history_turns=int(payload.get("history_turns") or 0), refused=bool(payload.get("refused"))))
        return out

    def evidence(self, team: str, chunk_ids: Iterable[int]) -> TeamEvidence:
        """What ``chunk_ids`` hold now, and which of them every current member of ``team`` may see (asked of
        PostgreSQL as each member: the same row-level security as their searches)."""
        ids = sorted(set(chunk_ids))
        with self._db.writer() as conn:
            members = tuple(r[0] for r in conn.execute(_MEMBERS, (team,)).fetchall())
            rows = conn.cursor(row_factory=dict_row).execute(_CHUNKS, (ids,)).fetchall() if ids else []
        chunks = {int(r["chunk_id"]): EvidenceChunk(int(r["chunk_id"]), int(r["document_id"]), r["title"], r["url"],
                                                    r["text"]) for r in rows}
        visible: set[int] = set(chunks) if members else set()
        for user in members:
            if not visible:
                break
            with self._db.reader(user) as conn:
                visible &= {int(r[0]) for r in conn.execute(_VISIBLE, (sorted(visible),)).fetchall()}
        return TeamEvidence(members, chunks, frozenset(visible))
