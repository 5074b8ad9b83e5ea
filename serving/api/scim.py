"""``/scim/v2/``: SCIM 2.0 provisioning (RFC 7643/7644) for Okta, Entra ID and other identity providers.

Users become principals (``userName``), groups become their groups (``displayName``); ``active: false`` or a
DELETE removes the principal and revokes its API keys in the same transaction as the change's audit row
(:mod:`citeline.operations.scim`). Authenticated by the bearer token of the ``scim`` principal source (compared in
constant time); API keys are not accepted here. Wire shapes come from ``scim2-models``: bodies are validated
with its ``User``/``Group`` models and replies are dumped by them. Errors are SCIM ``Error`` objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from scim2_models import Context, Group, Meta

from citeline.errors import ScimError
from citeline.facade import Citeline
from citeline.serving.api.scim_wire import (
    ENDPOINTS,
    UserModel,
    authorized,
    check_group,
    check_user,
    group_out,
    handled,
    list_out,
    operations,
    page_args,
    provider_config,
    read_body,
    reply,
    resource_types_of,
    run,
    schemas_of,
    user_out,
    validated,
)

__all__ = ["router"]

router = APIRouter(prefix="/scim/v2", include_in_schema=False)
_ACTOR = "scim"


# -- Users and Groups: the same six operations each, over cl.scim's <op>_user / <op>_group ---------------
@dataclass(frozen=True)
class _Kind:
    """One resource type: its endpoint, its name in ``cl.scim``'s methods, its scim2-models type and reply."""

    endpoint: str  # "Users": served at /scim/v2/Users and /scim/v2/Users/{id}
    noun: str  # "user": cl.scim.list_users, create_user, ..., delete_user; one resource's route is scim_user
    model: Any
    out: Callable[[Request, dict[str, Any]], dict[str, Any]]
    check: Callable[[dict[str, Any]], dict[str, Any]]

    def op(self, cl: Citeline, name: str) -> Callable[..., Any]:
        """``cl.scim``'s method for operation ``name`` on this kind (``list``: list_users, ``get``: get_user)."""
        method: Callable[..., Any] = getattr(cl.scim, f"{name}_{self.noun}s" if name == "list" else
                                             f"{name}_{self.noun}")
        return method


def _routes(kind: _Kind) -> None:
    """The six routes of one resource type (list, create, get, replace, patch, delete), each a SCIM reply."""
    path = f"/{kind.endpoint}"

    async def body(request: Request, cl: Citeline, ctx: Context) -> dict[str, Any]:
        return validated(kind.model, await read_body(request, cl.scim.config.max_body_bytes), ctx)

    @router.get(path, name=f"scim_list_{kind.noun}s")
    @handled
    async def list_(request: Request) -> Response:
        cl = await authorized(request)
        flt, start, count = page_args(request)
        total, rows = await run(request, lambda: kind.op(cl, "list")(flt, start, count))
        return list_out(request, total, max(1, start or 1), [kind.out(request, r) for r in rows])

    @router.post(path, name=f"scim_create_{kind.noun}")
    @handled
    async def create(request: Request) -> Response:
        cl = await authorized(request)
        resource = await body(request, cl, Context.RESOURCE_CREATION_REQUEST)
        out = kind.out(request, await run(request, lambda: kind.op(cl, "create")(resource, actor=_ACTOR)))
        return reply(out, 201, out["meta"]["location"])

    @router.get(f"{path}/{{resource_id}}", name=f"scim_{kind.noun}")
    @handled
    async def get(request: Request, resource_id: str) -> Response:
        cl = await authorized(request)
        return reply(kind.out(request, await run(request, lambda: kind.op(cl, "get")(resource_id))))

    @router.put(f"{path}/{{resource_id}}", name=f"scim_replace_{kind.noun}")
    @handled
    async def replace(request: Request, resource_id: str) -> Response:
        cl = await authorized(request)
        resource = await body(request, cl, Context.RESOURCE_REPLACEMENT_REQUEST)
        return reply(kind.out(request, await run(request, lambda: kind.op(cl, "replace")(resource_id, resource,
                                                                                          actor=_ACTOR))))

    @router.patch(f"{path}/{{resource_id}}", name=f"scim_patch_{kind.noun}")
    @handled
    async def patch(request: Request, resource_id: str) -> Response:
        cl = await authorized(request)
        ops = operations(await read_body(request, cl.scim.config.max_body_bytes))
        row = await run(request, lambda: kind.op(cl, "patch")(resource_id, ops, actor=_ACTOR, check=kind.check))
        return reply(kind.out(request, row))

    @router.delete(f"{path}/{{resource_id}}", name=f"scim_delete_{kind.noun}")
    @handled
    async def delete(request: Request, resource_id: str) -> Response:
        cl = await authorized(request)
        await run(request, lambda: kind.op(cl, "delete")(resource_id, actor=_ACTOR))
        return Response(status_code=204)


_routes(_Kind("Users", "user", UserModel, user_out, check_user))
_routes(_Kind("Groups", "group", Group, group_out, check_group))


@router.get("/ServiceProviderConfig")
@handled
async def service_provider_config(request: Request) -> Response:
    cl = await authorized(request)
    spc = provider_config(cl)
    spc.meta = Meta(resource_type="ServiceProviderConfig", location=str(request.url))
    return reply(spc.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _discovery(endpoint: str, kind: str, route: str, documents: Callable[[Request], list[Any]]) -> None:
    """``/{endpoint}``: the discovery ``documents`` as a list; ``/{endpoint}/{id}``: one (route ``scim_{route}``)."""

    @router.get(f"/{endpoint}", name=f"scim_{route}s")
    @handled
    async def listed(request: Request) -> Response:
        await authorized(request)
        items = [d.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for d in documents(request)]
        return list_out(request, len(items), 1, items)

    @router.get(f"/{endpoint}/{{resource_id}}", name=f"scim_{route}")
    @handled
    async def one(request: Request, resource_id: str) -> Response:
        await authorized(request)
        for d in documents(request):
            if d.id == resource_id:
                return reply(d.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
        raise ScimError(f"no {kind} {resource_id[:80]!r}", status=404)


_discovery("ResourceTypes", "ResourceType", "resource_type", resource_types_of)
_discovery("Schemas", "Schema", "schema", schemas_of)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@handled
async def unknown(request: Request, rest: str) -> Response:
    """Anything else under /scim/v2: a SCIM error (501 for the root ``/.search``, which is not supported)."""
    await authorized(request)
    parts = rest.strip("/").split("/")
    if parts[0] in ENDPOINTS and len(parts) <= 2:
        raise ScimError(f"{request.method} is not allowed on /scim/v2/{rest[:100]}", status=405)
    if rest == ".search" and request.method == "POST":
        raise ScimError("searching several resource types at once (POST /.search) is not supported", status=501)
    raise ScimError(f"no such SCIM endpoint: {request.method} /scim/v2/{rest[:100]}", status=404)
