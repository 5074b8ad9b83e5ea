"""Seeing what a user sees, and what an answer was shown: :class:`Inspect` (``cl.inspect``).

* **View as**: an admin searches or asks *as* a principal: the same retrieval, under the same row-level
  policies, as that principal's own request would run, so the result is exactly what it would see. Each
  one writes an ``admin``/``impersonate`` row naming both identities (``principal``: the admin; the
  payload's ``as_user``: the principal), before the result is returned (no row, no result). An ask also
  leaves the assistant's usual ``ask`` row for the principal; the impersonation row links it
  (``answer_audit_id``) and both carry the request's id.
* **Replay**: the chunks an audited answer or search was shown (the row's ``shown`` list: chunk ids), as
  they are today: a chunk's text never changes under its id (re-indexing replaces the rows), so a chunk
  that still exists is exactly the text that was shown (``unchanged``), and one that is gone was replaced
  or deleted. Whether the asker may still see each one is decided by PostgreSQL as that principal today.
  Each replay writes an ``admin``/``audit.replay`` row.
* **Audit search**: rows by principal, kind, action, time range and request id, newest first, paged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from citeline.access.audit import AuditLog, AuditRecord
from citeline.access.audit_search import AuditFilter, AuditPage, audit_row, search_audit
from citeline.access.principals import PrincipalDirectory
from citeline.answers.answer import Answer
from citeline.answers.assistant import Assistant
from citeline.db import Database
from citeline.domain import SearchMode
from citeline.errors import CitelineError, PrincipalError
from citeline.retrieval.search import SearchResult
from citeline.retrieval.shown import ChunkToday, chunks_today

__all__ = ["Inspect", "Replay"]

Search = Callable[..., SearchResult]


@dataclass(frozen=True)
class Replay:
    row: AuditRecord
    asker: str | None  # the principal the chunks were shown to
    asker_exists: bool  # still a principal today (if not: what it may see is judged as nobody's, public only)
    chunks: list[tuple[dict[str, Any], ChunkToday]] = field(default_factory=list)  # (as recorded, today)


def _shown(hits: Any) -> list[dict[str, Any]]:
    return [{"n": i, "chunk_id": h.chunk_id, "document_id": h.document_id, "source": h.source,
             "external_id": h.external_id} for i, h in enumerate(hits, 1)]


class Inspect:
    """View as a principal, replay an audited answer, search the audit log."""

    def __init__(self, db: Database, *, audit: Callable[[], AuditLog], principals: PrincipalDirectory,
                 search: Search, assistant: Callable[[], Assistant]) -> None:
        self._db = db
        self._audit = audit
        self._principals = principals
        self._search = search
        self._assistant = assistant

    def search_as(self, query: str, *, user: str, actor: str, k: int | None = None,
                  mode: SearchMode = SearchMode.HYBRID) -> tuple[SearchResult, int]:
        """What ``user`` gets searching ``query``; the impersonation row's id. Unknown user: PrincipalError."""
        who = self._principals.get(user)
        result = self._search(query, user=who.user, k=k, mode=mode)
        row = self._audit().append("admin", "impersonate", principal=actor, team=who.team, payload={
            "admin": actor, "as_user": who.user, "as_groups": list(who.groups), "what": "search", "query": query,
            "k": k, "mode": mode.value, "shown": _shown(result.hits)})
        return result, row.id

    def ask_as(self, question: str, *, user: str, actor: str, model: str | None = None) -> tuple[Answer, int]:
        """``user``'s answer to ``question`` (audited for ``user`` by the assistant); the impersonation row's id."""
        who = self._principals.get(user)
        answer = self._assistant().ask(question, who, model=model)
        row = self._audit().append("admin", "impersonate", principal=actor, team=who.team, payload={
            "admin": actor, "as_user": who.user, "as_groups": list(who.groups), "what": "ask",
            "question": question, "answer_audit_id": answer.audit_id})
        return answer, row.id

    def replay(self, row_id: int, *, actor: str) -> Replay | None:
        """The chunks audit row ``row_id`` records as shown, as they are today (None: no such row)."""
        row = audit_row(self._db, row_id)
        if row is None:
            return None
        shown = row.payload.get("shown")
        if not isinstance(shown, list):
            raise CitelineError(f"audit row {row_id} ({row.kind}/{row.action}) records no chunks shown: replay an "
                              "answer (ask), a search or a view-as search row")
        asker = row.payload.get("as_user") if row.action == "impersonate" else row.principal
        try:
            exists = asker is not None and self._principals.get(str(asker)) is not None
        except PrincipalError:
            exists = False
        recorded = [s for s in shown if isinstance(s, dict) and isinstance(s.get("chunk_id"), int)]
        today = chunks_today(self._db, [s["chunk_id"] for s in recorded], user=str(asker) if exists else None)
        replay = Replay(row, str(asker) if asker is not None else None, exists,
                        [(s, today[s["chunk_id"]]) for s in recorded])
        self._audit().append("admin", "audit.replay", principal=actor, payload={
            "row": row_id, "asker": replay.asker, "chunks": len(recorded),
            "gone": sum(not t.exists for _, t in replay.chunks),
            "hidden_now": sum(t.exists and not t.visible for _, t in replay.chunks)})
        return replay

    def audit_search(self, where: AuditFilter, *, limit: int = 50) -> AuditPage:
        """Audit rows matching ``where``, newest first (a read: not audited)."""
        return search_audit(self._db, where, limit=limit)
