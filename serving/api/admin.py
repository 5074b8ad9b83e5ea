"""``/v1/admin/...``: keys, principals, audit verify/export; every route needs an admin key.

Every change goes through the facade's audited methods, naming the admin's key as the actor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import PlainTextResponse, Response

from citeline.domain import Principal
from citeline.serving.api.bodies import KeyBody, PrincipalBody
from citeline.serving.api.deps import Admin, Facade, actor

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin")


@router.post("/keys")
def create_key(body: KeyBody, who: Admin, cl: Facade) -> dict[str, Any]:
    new = cl.admin.create_key(body.user, actor=actor(who), admin=body.admin, label=body.label)
    return {"key_id": new.key.key_id, "user": body.user, "admin": body.admin, "key": new.secret}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, who: Admin, cl: Facade) -> dict[str, Any]:
    if not cl.admin.revoke_key(key_id, actor=actor(who)):
        raise HTTPException(404, f"no active key {key_id}")
    return {"key_id": key_id, "revoked": True}


@router.put("/principals")
def put_principal(body: PrincipalBody, who: Admin, cl: Facade) -> dict[str, Any]:
    try:
        p = cl.admin.add_principal(Principal(body.user, tuple(body.groups), body.team), actor=actor(who))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"user": p.user, "groups": list(p.groups), "team": p.team}


@router.delete("/principals/{user}")
def delete_principal(user: str, who: Admin, cl: Facade) -> dict[str, Any]:
    revoked = cl.admin.delete_principal(user, actor=actor(who))
    if revoked is None:
        raise HTTPException(404, f"no principal named {user!r}")
    return {"user": user, "removed": True, "revoked_keys": revoked}


@router.get("/audit/verify")
def audit_verify(who: Admin, cl: Facade) -> dict[str, Any]:
    return cl.audit.verify().as_dict()


@router.get("/audit/export")
def audit_export(who: Admin, cl: Facade, format: Literal["jsonl", "csv"] = "jsonl",
                 since: str | None = None) -> Response:
    try:
        when = datetime.fromisoformat(since) if since else None
    except ValueError as exc:
        raise HTTPException(422, f"since must be an ISO date or time, not {since!r}") from exc
    media = "application/x-ndjson" if format == "jsonl" else "text/csv"
    return PlainTextResponse("".join(cl.audit.export(format, since=when)), media_type=media)
