"""``/scim/v2/``: SCIM 2.0 provisioning (RFC 7643/7644) for Okta, Entra ID and other identity providers.

Users become principals (``userName``), groups become their groups (``displayName``); ``active: false`` or a
DELETE removes the principal and revokes its API keys in the same transaction as the change's audit row
(:mod:`citeline.operations.scim`). Authenticated by the bearer token of the ``scim`` principal source (compared in
constant time); API keys are not accepted here. Wire shapes come from ``scim2-models``: bodies are validated
with its ``User``/``Group`` models and replies are dumped by them. Errors are SCIM ``Error`` objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    Meta,
    Patch,
    PatchOp,
    ResourceType,
    ResponseParameters,
    Schema,
    ServiceProviderConfig,
    Sort,
    User,
)
from starlette.concurrency import run_in_threadpool

from citeline.errors import ConfigError, ScimError
from citeline.facade import Citeline

__all__ = ["router"]

router = APIRouter(prefix="/scim/v2", include_in_schema=False)

_MEDIA = "application/scim+json"
_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
_UserModel = User[EnterpriseUser]
_ACTOR = "scim"
_ENDPOINTS = {"Users", "Groups", "ServiceProviderConfig", "ResourceTypes", "Schemas"}


def _error(status: int, detail: str, scim_type: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"schemas": [_ERROR], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    headers = {"WWW-Authenticate": 'Bearer realm="citeline-scim"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=_MEDIA, headers=headers)


def _reply(body: dict[str, Any], status: int = 200, location: str | None = None) -> JSONResponse:
    headers = {"Location": location} if location else None
    return JSONResponse(body, status_code=status, media_type=_MEDIA, headers=headers)


async def _scim(request: Request) -> Citeline:
    """The facade, once the request's bearer token is the SCIM token (else a SCIM 401)."""
    cl: Citeline = request.app.state.citeline
    try:
        scim = await run_in_threadpool(lambda: cl.scim)
    except ConfigError as exc:
        raise ScimError(f"SCIM is not configured here: {exc}", status=404) from None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        ok = scheme.lower() == "bearer" and scim.authenticate(token)
    except ConfigError as exc:
        raise ScimError(f"SCIM is not ready: {exc}", status=503) from None
    if not ok:
        raise ScimError("missing or wrong SCIM bearer token (the identity provider's secret token)", status=401)
    return cl


async def _body(request: Request, limit: int) -> dict[str, Any]:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ScimError(f"request body over {limit} bytes (max_body_bytes)", status=413)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ScimError("the body is not JSON", scim_type="invalidSyntax") from None
    if not isinstance(body, dict):
        raise ScimError("the body must be a JSON object", scim_type="invalidSyntax")
    return body


def _validated(model: Any, body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """``body`` checked by the scim2-models type (the wire shape's owner), as a plain dict in SCIM's casing."""
    try:
        parsed = model.model_validate(body, scim_ctx=ctx)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(map(str, first["loc"])) or "(body)"
        raise ScimError(f"invalid {model.__name__.split('[')[0]}: {where}: {first['msg']}",
                        scim_type="invalidValue") from None
    dumped: dict[str, Any] = parsed.model_dump(scim_ctx=Context.DEFAULT)
    return dumped


def _check_user(resource: dict[str, Any]) -> dict[str, Any]:
    return _validated(_UserModel, resource, Context.RESOURCE_REPLACEMENT_REQUEST)


def _check_group(resource: dict[str, Any]) -> dict[str, Any]:
    return _validated(Group, resource, Context.RESOURCE_REPLACEMENT_REQUEST)


def _meta(request: Request, kind: str, row: dict[str, Any]) -> dict[str, Any]:
    created: datetime = row["created_at"]
    modified: datetime = row["updated_at"]
    return {"resourceType": kind, "created": created.isoformat(), "lastModified": modified.isoformat(),
            "location": str(request.url_for(f"scim_{kind.lower()}", resource_id=row["id"])),
            "version": f'W/"{row["version"]}"'}


def _user(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    data = {**row["resource"], "id": row["id"], "userName": row["user_name"], "meta": _meta(request, "User", row)}
    if "active" in row["resource"]:  # as stored (a PATCH may have removed it; the principal keeps its state)
        data["active"] = row["active"]
    return _UserModel.model_validate(data).model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE,
                                                      response_parameters=_shown(request, _UserModel))


def _group(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    data = {"id": row["id"], "displayName": row["display_name"], "meta": _meta(request, "Group", row),
            "members": [{"value": m["value"], "display": m["display"], "type": "User",
                         "$ref": str(request.url_for("scim_user", resource_id=m["value"]))} for m in row["members"]]}
    if row.get("external_id"):
        data["externalId"] = row["external_id"]
    return Group.model_validate(data).model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE,
                                                 response_parameters=_shown(request, Group))


def _shown(request: Request, model: Any) -> ResponseParameters[Any] | None:
    """The ``attributes`` / ``excludedAttributes`` query parameters (RFC 7644 §3.9); 400 when malformed."""
    q = request.query_params
    if "attributes" not in q and "excludedAttributes" not in q:
        return None
    try:
        return ResponseParameters[model].model_validate(
            {"attributes": q.get("attributes"), "excludedAttributes": q.get("excludedAttributes")})
    except (ValidationError, ValueError) as exc:
        raise ScimError(f"invalid attributes or excludedAttributes: {exc}", scim_type="invalidValue") from None


async def _run(request: Request, work: Callable[[], Any]) -> Any:
    return await run_in_threadpool(work)


def _handle(fn: Callable[..., Any]) -> Callable[..., Any]:
    """SCIM errors as SCIM Error replies (the same for every route)."""
    import functools

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            result: Response = await fn(*args, **kwargs)
            return result
        except ScimError as exc:
            return _error(exc.status, str(exc), exc.scim_type)
    return wrapper


def _list(request: Request, total: int, start: int, items: list[dict[str, Any]]) -> JSONResponse:
    return _reply({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": total,
                   "startIndex": start, "itemsPerPage": len(items), "Resources": items})


def _page_args(request: Request) -> tuple[str | None, int | None, int | None]:
    q = request.query_params
    try:
        start = int(q["startIndex"]) if "startIndex" in q else None
        count = int(q["count"]) if "count" in q else None
    except ValueError:
        raise ScimError("startIndex and count must be integers", scim_type="invalidValue") from None
    return q.get("filter"), start, count


# -- Users ------------------------------------------------------------------------------------------
@router.get("/Users")
@_handle
async def list_users(request: Request) -> Response:
    cl = await _scim(request)
    flt, start, count = _page_args(request)
    total, rows = await _run(request, lambda: cl.scim.list_users(flt, start, count))
    return _list(request, total, max(1, start or 1), [_user(request, r) for r in rows])


@router.post("/Users")
@_handle
async def create_user(request: Request) -> Response:
    cl = await _scim(request)
    body = _validated(_UserModel, await _body(request, cl.scim.config.max_body_bytes),
                      Context.RESOURCE_CREATION_REQUEST)
    row = await _run(request, lambda: cl.scim.create_user(body, actor=_ACTOR))
    out = _user(request, row)
    return _reply(out, 201, out["meta"]["location"])


@router.get("/Users/{resource_id}", name="scim_user")
@_handle
async def get_user(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    return _reply(_user(request, await _run(request, lambda: cl.scim.get_user(resource_id))))


@router.put("/Users/{resource_id}")
@_handle
async def replace_user(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    body = _validated(_UserModel, await _body(request, cl.scim.config.max_body_bytes),
                      Context.RESOURCE_REPLACEMENT_REQUEST)
    return _reply(_user(request, await _run(request, lambda: cl.scim.replace_user(resource_id, body, actor=_ACTOR))))


@router.patch("/Users/{resource_id}")
@_handle
async def patch_user(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    ops = _operations(await _body(request, cl.scim.config.max_body_bytes))
    row = await _run(request, lambda: cl.scim.patch_user(resource_id, ops, actor=_ACTOR, check=_check_user))
    return _reply(_user(request, row))


@router.delete("/Users/{resource_id}")
@_handle
async def delete_user(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    await _run(request, lambda: cl.scim.delete_user(resource_id, actor=_ACTOR))
    return Response(status_code=204)


# -- Groups -----------------------------------------------------------------------------------------
@router.get("/Groups")
@_handle
async def list_groups(request: Request) -> Response:
    cl = await _scim(request)
    flt, start, count = _page_args(request)
    total, rows = await _run(request, lambda: cl.scim.list_groups(flt, start, count))
    return _list(request, total, max(1, start or 1), [_group(request, r) for r in rows])


@router.post("/Groups")
@_handle
async def create_group(request: Request) -> Response:
    cl = await _scim(request)
    body = _validated(Group, await _body(request, cl.scim.config.max_body_bytes), Context.RESOURCE_CREATION_REQUEST)
    out = _group(request, await _run(request, lambda: cl.scim.create_group(body, actor=_ACTOR)))
    return _reply(out, 201, out["meta"]["location"])


@router.get("/Groups/{resource_id}", name="scim_group")
@_handle
async def get_group(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    return _reply(_group(request, await _run(request, lambda: cl.scim.get_group(resource_id))))


@router.put("/Groups/{resource_id}")
@_handle
async def replace_group(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    body = _validated(Group, await _body(request, cl.scim.config.max_body_bytes), Context.RESOURCE_REPLACEMENT_REQUEST)
    return _reply(_group(request, await _run(request, lambda: cl.scim.replace_group(resource_id, body,
                                                                                     actor=_ACTOR))))


@router.patch("/Groups/{resource_id}")
@_handle
async def patch_group(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    ops = _operations(await _body(request, cl.scim.config.max_body_bytes))
    row = await _run(request, lambda: cl.scim.patch_group(resource_id, ops, actor=_ACTOR, check=_check_group))
    return _reply(_group(request, row))


@router.delete("/Groups/{resource_id}")
@_handle
async def delete_group(request: Request, resource_id: str) -> Response:
    cl = await _scim(request)
    await _run(request, lambda: cl.scim.delete_group(resource_id, actor=_ACTOR))
    return Response(status_code=204)


def _operations(body: dict[str, Any]) -> list[dict[str, Any]]:
    schemas = body.get("schemas")
    if not (isinstance(schemas, list) and PatchOp.__schema__ in schemas):
        raise ScimError(f"a PATCH body is a PatchOp ({PatchOp.__schema__})", scim_type="invalidSyntax")
    ops = body.get("Operations", body.get("operations"))
    if not isinstance(ops, list) or not ops:
        raise ScimError("PATCH needs a non-empty Operations list", scim_type="invalidSyntax")
    return ops


# -- discovery ----------------------------------------------------------------------------------------
def _config(cl: Citeline) -> ServiceProviderConfig:
    return ServiceProviderConfig(
        documentation_uri=None, patch=Patch(supported=True), bulk=Bulk(supported=False, max_operations=0,
                                                                         max_payload_size=0),
        filter=Filter(supported=True, max_results=cl.scim.config.max_results),
        change_password=ChangePassword(supported=False), sort=Sort(supported=False), etag=ETag(supported=False),
        authentication_schemes=[AuthenticationScheme(
            type="oauthbearertoken", name="Bearer token", primary=True,
            description="the secret token configured for the scim principal source")])


def _resource_types(request: Request) -> list[ResourceType]:
    user = ResourceType.from_resource(_UserModel)
    group = ResourceType.from_resource(Group)
    for rt in (user, group):
        rt.meta = Meta(resource_type="ResourceType",
                       location=str(request.url_for("scim_resource_type", resource_id=rt.id)))
    return [user, group]


def _schemas(request: Request) -> list[Schema]:
    out = [User.to_schema(), Group.to_schema(), EnterpriseUser.to_schema()]
    for s in out:
        s.meta = Meta(resource_type="Schema", location=str(request.url_for("scim_schema", resource_id=s.id)))
    return out


@router.get("/ServiceProviderConfig")
@_handle
async def service_provider_config(request: Request) -> Response:
    cl = await _scim(request)
    spc = _config(cl)
    spc.meta = Meta(resource_type="ServiceProviderConfig", location=str(request.url))
    return _reply(spc.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


@router.get("/ResourceTypes")
@_handle
async def resource_types(request: Request) -> Response:
    await _scim(request)
    items = [rt.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for rt in _resource_types(request)]
    return _list(request, len(items), 1, items)


@router.get("/ResourceTypes/{resource_id}", name="scim_resource_type")
@_handle
async def resource_type(request: Request, resource_id: str) -> Response:
    await _scim(request)
    for rt in _resource_types(request):
        if rt.id == resource_id:
            return _reply(rt.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    raise ScimError(f"no ResourceType {resource_id[:80]!r}", status=404)


@router.get("/Schemas")
@_handle
async def schemas(request: Request) -> Response:
    await _scim(request)
    items = [s.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for s in _schemas(request)]
    return _list(request, len(items), 1, items)


@router.get("/Schemas/{resource_id}", name="scim_schema")
@_handle
async def schema(request: Request, resource_id: str) -> Response:
    await _scim(request)
    for s in _schemas(request):
        if s.id == resource_id:
            return _reply(s.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    raise ScimError(f"no Schema {resource_id[:80]!r}", status=404)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@_handle
async def unknown(request: Request, rest: str) -> Response:
    """Anything else under /scim/v2: a SCIM error (501 for the root ``/.search``, which is not supported)."""
    await _scim(request)
    parts = rest.strip("/").split("/")
    if parts[0] in _ENDPOINTS and len(parts) <= 2:
        raise ScimError(f"{request.method} is not allowed on /scim/v2/{rest[:100]}", status=405)
    if rest == ".search" and request.method == "POST":
        raise ScimError("searching several resource types at once (POST /.search) is not supported", status=501)
    raise ScimError(f"no such SCIM endpoint: {request.method} /scim/v2/{rest[:100]}", status=404)
