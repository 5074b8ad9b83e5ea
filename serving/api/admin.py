"""``/v1/admin/...``: keys and principals; every route needs an admin (key flag, or an admin group's sign-in).

The admin API's other parts: :mod:`~citeline.serving.api.admin_sources` (sources, sync now, runs),
:mod:`~citeline.serving.api.admin_adapters` (adapters), :mod:`~citeline.serving.api.admin_audit` (audit
verify/export/search, view as, replay); their bodies and replies are in
:mod:`~citeline.serving.api.admin_models`. Every change goes through the facade's audited methods (the
change and its audit row in one transaction), naming the admin as the actor.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from citeline.domain import Principal
from citeline.errors import PrincipalError
from citeline.serving.api.admin_models import (
    KeyCreatedOut,
    KeyOut,
    KeyRevokedOut,
    PrincipalOut,
    PrincipalRemovedOut,
)
from citeline.serving.api.bodies import KeyBody, PrincipalBody
from citeline.serving.api.deps import Admin, Facade, actor

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _out(p: Principal) -> PrincipalOut:
    return PrincipalOut(user=p.user, groups=list(p.groups), team=p.team)


@router.get("/keys")
def list_keys(who: Admin, cl: Facade, user: str | None = None) -> list[KeyOut]:
    """Every key (or one user's), revoked ones included; never a secret."""
    return [KeyOut(key_id=k.key_id, user=k.user, admin=k.is_admin, label=k.label, created_at=k.created_at,
                   revoked_at=k.revoked_at) for k in cl.keys.list(user)]


@router.post("/keys")
def create_key(body: KeyBody, who: Admin, cl: Facade) -> KeyCreatedOut:
    try:
        new = cl.admin.create_key(body.user, actor=actor(who), admin=body.admin, label=body.label)
    except PrincipalError as exc:
        raise HTTPException(404, str(exc)) from exc
    return KeyCreatedOut(key_id=new.key.key_id, user=body.user, admin=body.admin, label=body.label, key=new.secret)


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, who: Admin, cl: Facade) -> KeyRevokedOut:
    if not cl.admin.revoke_key(key_id, actor=actor(who)):
        raise HTTPException(404, f"no active key {key_id[:40]!r}")
    return KeyRevokedOut(key_id=key_id, revoked=True)


@router.get("/principals")
def list_principals(who: Admin, cl: Facade) -> list[PrincipalOut]:
    return [_out(p) for p in cl.principals.list()]


@router.get("/principals/{user:path}")  # a name may contain "/" (it may not contain spaces)
def get_principal(user: str, who: Admin, cl: Facade) -> PrincipalOut:
    try:
        return _out(cl.principals.get(user))
    except PrincipalError as exc:
        raise HTTPException(404, f"no principal named {user[:200]!r}") from exc


@router.put("/principals")
def put_principal(body: PrincipalBody, who: Admin, cl: Facade) -> PrincipalOut:
    try:
        p = cl.admin.add_principal(Principal(body.user, tuple(body.groups), body.team), actor=actor(who))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _out(p)


@router.delete("/principals/{user:path}")
def delete_principal(user: str, who: Admin, cl: Facade) -> PrincipalRemovedOut:
    revoked = cl.admin.delete_principal(user, actor=actor(who))
    if revoked is None:
        raise HTTPException(404, f"no principal named {user[:200]!r}")
    return PrincipalRemovedOut(user=user, removed=True, revoked_keys=revoked)
