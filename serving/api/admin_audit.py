"""``/v1/admin/audit...`` and ``/v1/admin/view-as``: verify, export and search the audit log; act as a user
(audited as an impersonation naming both identities); replay the chunks an audited answer was shown. Admin only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse, Response

from citeline.errors import PrincipalError
from citeline.facade import AuditFilter, AuditRecord
from citeline.serving.api.admin_models import (
    AuditPageOut,
    AuditRowOut,
    ChunkReplayOut,
    HitOut,
    ReplayOut,
    VerifyOut,
    ViewAsBody,
    ViewAsOut,
)
from citeline.serving.api.deps import Admin, Facade, actor

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"])

Text = Annotated[str | None, Query(max_length=200)]


def _row(r: AuditRecord) -> AuditRowOut:
    return AuditRowOut(**vars(r))


def _when(name: str, value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError as exc:
        raise HTTPException(422, f"{name} must be an ISO date or time, not {(value or '')[:40]!r}") from exc


@router.get("/audit/verify")
def audit_verify(who: Admin, cl: Facade) -> VerifyOut:
    return VerifyOut(**cl.audit.verify().as_dict())


@router.get("/audit/export", response_class=PlainTextResponse,
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}})
def audit_export(who: Admin, cl: Facade, format: Literal["jsonl", "csv"] = "jsonl",
                 since: str | None = None) -> Response:
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    return PlainTextResponse("".join(cl.audit.export(format, since=_when("since", since))), media_type=media)


@router.get("/audit")
def audit_search(who: Admin, cl: Facade, principal: Text = None, kind: Text = None, action: Text = None,
                 since: str | None = None, until: str | None = None, request_id: Text = None,
                 before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50) -> AuditPageOut:
    """Rows by principal, kind, action, time range (``since`` inclusive, ``until`` exclusive) and request id,
    newest first; page with ``before`` = the previous page's ``next_before``."""
    where = AuditFilter(principal=principal, kind=kind, action=action, since=_when("since", since),
                        until=_when("until", until), request_id=request_id, before=before)
    page = cl.inspect.audit_search(where, limit=limit)
    return AuditPageOut(rows=[_row(r) for r in page.rows], next_before=page.next_before)


@router.get("/audit/{row_id}/replay")
def audit_replay(row_id: int, who: Admin, cl: Facade) -> ReplayOut:
    """The chunks audit row ``row_id`` records as shown, as they are today, and whether the asker may still see
    each (audited: ``admin``/``audit.replay``)."""
    replay = cl.inspect.replay(row_id, actor=actor(who)) if 0 < row_id < 2**63 else None
    if replay is None:
        raise HTTPException(404, f"no audit row {row_id}")
    chunks = [ChunkReplayOut(n=rec.get("n") if isinstance(rec.get("n"), int) else None, chunk_id=now.chunk_id,
                             document_id=now.document_id if now.exists else rec.get("document_id"),
                             source=now.source if now.exists else rec.get("source"),
                             external_id=now.external_id if now.exists else rec.get("external_id"),
                             exists=now.exists, unchanged=now.exists, visible_now=now.visible, title=now.title,
                             url=now.url, text=now.text) for rec, now in replay.chunks]
    return ReplayOut(row=_row(replay.row), asker=replay.asker, asker_exists=replay.asker_exists, chunks=chunks)


@router.post("/view-as")
def view_as(body: ViewAsBody, who: Admin, cl: Facade) -> ViewAsOut:
    """Search or ask exactly as ``user`` would (its access, in PostgreSQL), audited as an impersonation."""
    try:
        if body.what == "ask":
            answer, row = cl.inspect.ask_as(body.query, user=body.user, actor=actor(who), model=body.model)
            return ViewAsOut(user=body.user, what="ask", impersonation_audit_id=row, answer=answer.as_dict())
        result, row = cl.inspect.search_as(body.query, user=body.user, actor=actor(who), k=body.k, mode=body.mode)
    except PrincipalError as exc:
        raise HTTPException(404, f"no principal named {body.user[:200]!r}") from exc
    hits = [HitOut(**vars(h)) for h in result.hits]
    return ViewAsOut(user=body.user, what="search", impersonation_audit_id=row, hits=hits)
