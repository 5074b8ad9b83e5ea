"""``/v1/admin/adapters...``: the team adapters: list, register (from a folder on the server, checked against the
allowed roots: a caller's path is never trusted as given), promote, retire. Admin only; each change audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from citeline.errors import AdapterError
from citeline.serving.api.admin_models import AdapterOut, AdapterRegisterBody, PromoteBody, PromotionOut
from citeline.serving.api.deps import Admin, Facade, actor

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin/adapters", tags=["admin"])


def _out(a: Any) -> AdapterOut:
    return AdapterOut(served_name=a.served_name, name=a.name, team=a.team, version=a.version, status=a.status,
                      base_model=a.base_model, rank=a.rank, target_modules=list(a.target_modules),
                      metrics=dict(a.metrics), created_at=a.created_at, created_by=a.created_by,
                      promoted_at=a.promoted_at)


def _known(cl: Any, served_name: str) -> None:
    if cl.adapters.get(served_name) is None:
        raise HTTPException(404, f"no adapter {served_name[:200]!r} is registered")


@router.get("")
def list_adapters(who: Admin, cl: Facade, team: str | None = None, status: str | None = None) -> list[AdapterOut]:
    return [_out(a) for a in cl.adapters.list(team=team, status=status)]


@router.post("")
def register_adapter(body: AdapterRegisterBody, who: Admin, cl: Facade) -> AdapterOut:
    try:
        return _out(cl.adapters.register_from(body.path, team=body.team, name=body.name, actor=actor(who)))
    except AdapterError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.post("/{served_name}/promote")
def promote_adapter(served_name: str, who: Admin, cl: Facade, body: PromoteBody | None = None) -> PromotionOut:
    _known(cl, served_name)
    body = body or PromoteBody()
    try:
        done = cl.adapters.promote(served_name, actor=actor(who), force=body.force, drain_s=body.drain_s)
    except AdapterError as exc:
        raise HTTPException(409, str(exc)) from exc
    return PromotionOut(**done.as_dict())


@router.post("/{served_name}/retire")
def retire_adapter(served_name: str, who: Admin, cl: Facade) -> AdapterOut:
    _known(cl, served_name)
    return _out(cl.adapters.retire(served_name, actor=actor(who)))
