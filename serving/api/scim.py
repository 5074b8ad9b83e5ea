"""``/scim/v2/``: SCIM 2.0 provisioning (RFC 7643/7644) for Okta, Entra ID and other identity providers.

Users become principals (``userName``), groups become their groups (``displayName``); ``active: false`` or a
DELETE removes the principal and revokes its API keys in the same transaction as the change's audit row
(:mod:`citeline.operations.scim`). Authenticated by the bearer token of the ``scim`` principal source (compared in
constant time); API keys are not accepted here. Wire shapes come from ``scim2-models``: bodies are validated
with its ``User``/``Group`` models and replies are dumped by them. Errors are SCIM ``Error`` objects.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from scim2_models import Context, Group, Meta

from citeline.errors import ScimError
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


# -- Users ------------------------------------------------------------------------------------------
@router.get("/Users")
@handled
async def list_users(request: Request) -> Response:
    cl = await authorized(request)
    flt, start, count = page_args(request)
    total, rows = await run(request, lambda: cl.scim.list_users(flt, start, count))
    return list_out(request, total, max(1, start or 1), [user_out(request, r) for r in rows])


@router.post("/Users")
@handled
async def create_user(request: Request) -> Response:
    cl = await authorized(request)
    body = validated(UserModel, await read_body(request, cl.scim.config.max_body_bytes),
                      Context.RESOURCE_CREATION_REQUEST)
    row = await run(request, lambda: cl.scim.create_user(body, actor=_ACTOR))
    out = user_out(request, row)
    return reply(out, 201, out["meta"]["location"])


@router.get("/Users/{resource_id}", name="scim_user")
@handled
async def get_user(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    return reply(user_out(request, await run(request, lambda: cl.scim.get_user(resource_id))))


@router.put("/Users/{resource_id}")
@handled
async def replace_user(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    body = validated(UserModel, await read_body(request, cl.scim.config.max_body_bytes),
                      Context.RESOURCE_REPLACEMENT_REQUEST)
    return reply(user_out(request, await run(request, lambda: cl.scim.replace_user(resource_id, body, actor=_ACTOR))))


@router.patch("/Users/{resource_id}")
@handled
async def patch_user(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    ops = operations(await read_body(request, cl.scim.config.max_body_bytes))
    row = await run(request, lambda: cl.scim.patch_user(resource_id, ops, actor=_ACTOR, check=check_user))
    return reply(user_out(request, row))


@router.delete("/Users/{resource_id}")
@handled
async def delete_user(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    await run(request, lambda: cl.scim.delete_user(resource_id, actor=_ACTOR))
    return Response(status_code=204)


# -- Groups -----------------------------------------------------------------------------------------
@router.get("/Groups")
@handled
async def list_groups(request: Request) -> Response:
    cl = await authorized(request)
    flt, start, count = page_args(request)
    total, rows = await run(request, lambda: cl.scim.list_groups(flt, start, count))
    return list_out(request, total, max(1, start or 1), [group_out(request, r) for r in rows])


@router.post("/Groups")
@handled
async def create_group(request: Request) -> Response:
    cl = await authorized(request)
    body = validated(Group, await read_body(request, cl.scim.config.max_body_bytes), Context.RESOURCE_CREATION_REQUEST)
    out = group_out(request, await run(request, lambda: cl.scim.create_group(body, actor=_ACTOR)))
    return reply(out, 201, out["meta"]["location"])


@router.get("/Groups/{resource_id}", name="scim_group")
@handled
async def get_group(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    return reply(group_out(request, await run(request, lambda: cl.scim.get_group(resource_id))))


@router.put("/Groups/{resource_id}")
@handled
async def replace_group(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    body = validated(Group, await read_body(request, cl.scim.config.max_body_bytes),
                     Context.RESOURCE_REPLACEMENT_REQUEST)
    return reply(group_out(request, await run(request, lambda: cl.scim.replace_group(resource_id, body,
                                                                                     actor=_ACTOR))))


@router.patch("/Groups/{resource_id}")
@handled
async def patch_group(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    ops = operations(await read_body(request, cl.scim.config.max_body_bytes))
    row = await run(request, lambda: cl.scim.patch_group(resource_id, ops, actor=_ACTOR, check=check_group))
    return reply(group_out(request, row))


@router.delete("/Groups/{resource_id}")
@handled
async def delete_group(request: Request, resource_id: str) -> Response:
    cl = await authorized(request)
    await run(request, lambda: cl.scim.delete_group(resource_id, actor=_ACTOR))
    return Response(status_code=204)


@router.get("/ServiceProviderConfig")
@handled
async def service_provider_config(request: Request) -> Response:
    cl = await authorized(request)
    spc = provider_config(cl)
    spc.meta = Meta(resource_type="ServiceProviderConfig", location=str(request.url))
    return reply(spc.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


@router.get("/ResourceTypes")
@handled
async def resource_types(request: Request) -> Response:
    await authorized(request)
    items = [rt.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for rt in resource_types_of(request)]
    return list_out(request, len(items), 1, items)


@router.get("/ResourceTypes/{resource_id}", name="scim_resource_type")
@handled
async def resource_type(request: Request, resource_id: str) -> Response:
    await authorized(request)
    for rt in resource_types_of(request):
        if rt.id == resource_id:
            return reply(rt.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    raise ScimError(f"no ResourceType {resource_id[:80]!r}", status=404)


@router.get("/Schemas")
@handled
async def schemas(request: Request) -> Response:
    await authorized(request)
    items = [s.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for s in schemas_of(request)]
    return list_out(request, len(items), 1, items)


@router.get("/Schemas/{resource_id}", name="scim_schema")
@handled
async def schema(request: Request, resource_id: str) -> Response:
    await authorized(request)
    for s in schemas_of(request):
        if s.id == resource_id:
            return reply(s.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    raise ScimError(f"no Schema {resource_id[:80]!r}", status=404)


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
