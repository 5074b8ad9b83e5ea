"""The SCIM endpoint's wire helpers (serving/api/scim.py has the routes): authentication by the SCIM token,
bodies read with a size cap and validated by scim2-models, resources and lists dumped by them (with
``attributes``/``excludedAttributes``), SCIM ``Error`` replies, and the discovery documents."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import Request
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

__all__ = ["ENDPOINTS", "ERROR_SCHEMA", "MEDIA", "UserModel", "authorized", "check_group", "check_user", "error",
           "group_out", "handled", "list_out", "meta", "operations", "page_args", "provider_config", "read_body",
           "reply", "resource_types_of", "run", "schemas_of", "shown", "user_out", "validated"]

MEDIA = "application/scim+json"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
UserModel = User[EnterpriseUser]
ENDPOINTS = {"Users", "Groups", "ServiceProviderConfig", "ResourceTypes", "Schemas"}


def error(status: int, detail: str, scim_type: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    headers = {"WWW-Authenticate": 'Bearer realm="citeline-scim"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA, headers=headers)


def reply(body: dict[str, Any], status: int = 200, location: str | None = None) -> JSONResponse:
    headers = {"Location": location} if location else None
    return JSONResponse(body, status_code=status, media_type=MEDIA, headers=headers)


async def authorized(request: Request) -> Citeline:
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


async def read_body(request: Request, limit: int) -> dict[str, Any]:
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


def validated(model: Any, body: dict[str, Any], ctx: Context) -> dict[str, Any]:
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


def check_user(resource: dict[str, Any]) -> dict[str, Any]:
    return validated(UserModel, resource, Context.RESOURCE_REPLACEMENT_REQUEST)


def check_group(resource: dict[str, Any]) -> dict[str, Any]:
    return validated(Group, resource, Context.RESOURCE_REPLACEMENT_REQUEST)


def meta(request: Request, kind: str, row: dict[str, Any]) -> dict[str, Any]:
    created: datetime = row["created_at"]
    modified: datetime = row["updated_at"]
    return {"resourceType": kind, "created": created.isoformat(), "lastModified": modified.isoformat(),
            "location": str(request.url_for(f"scim_{kind.lower()}", resource_id=row["id"])),
            "version": f'W/"{row["version"]}"'}


def user_out(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    data = {**row["resource"], "id": row["id"], "userName": row["user_name"], "meta": meta(request, "User", row)}
    if "active" in row["resource"]:  # as stored (a PATCH may have removed it; the principal keeps its state)
        data["active"] = row["active"]
    return UserModel.model_validate(data).model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE,
                                                      response_parameters=shown(request, UserModel))


def group_out(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    data = {"id": row["id"], "displayName": row["display_name"], "meta": meta(request, "Group", row),
            "members": [{"value": m["value"], "display": m["display"], "type": "User",
                         "$ref": str(request.url_for("scim_user", resource_id=m["value"]))} for m in row["members"]]}
    if row.get("external_id"):
        data["externalId"] = row["external_id"]
    return Group.model_validate(data).model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE,
                                                 response_parameters=shown(request, Group))


def shown(request: Request, model: Any) -> ResponseParameters[Any] | None:
    """The ``attributes`` / ``excludedAttributes`` query parameters (RFC 7644 §3.9); 400 when malformed."""
    q = request.query_params
    if "attributes" not in q and "excludedAttributes" not in q:
        return None
    try:
        return ResponseParameters[model].model_validate(
            {"attributes": q.get("attributes"), "excludedAttributes": q.get("excludedAttributes")})
    except (ValidationError, ValueError) as exc:
        raise ScimError(f"invalid attributes or excludedAttributes: {exc}", scim_type="invalidValue") from None


async def run(request: Request, work: Callable[[], Any]) -> Any:
    return await run_in_threadpool(work)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """SCIM errors as SCIM Error replies (the same for every route)."""
    import functools

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            result: Response = await fn(*args, **kwargs)
            return result
        except ScimError as exc:
            return error(exc.status, str(exc), exc.scim_type)
    return wrapper


def list_out(request: Request, total: int, start: int, items: list[dict[str, Any]]) -> JSONResponse:
    return reply({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": total,
                   "startIndex": start, "itemsPerPage": len(items), "Resources": items})


def page_args(request: Request) -> tuple[str | None, int | None, int | None]:
    q = request.query_params
    try:
        start = int(q["startIndex"]) if "startIndex" in q else None
        count = int(q["count"]) if "count" in q else None
    except ValueError:
        raise ScimError("startIndex and count must be integers", scim_type="invalidValue") from None
    return q.get("filter"), start, count



def operations(body: dict[str, Any]) -> list[dict[str, Any]]:
    schemas = body.get("schemas")
    if not (isinstance(schemas, list) and PatchOp.__schema__ in schemas):
        raise ScimError(f"a PATCH body is a PatchOp ({PatchOp.__schema__})", scim_type="invalidSyntax")
    ops = body.get("Operations", body.get("operations"))
    if not isinstance(ops, list) or not ops:
        raise ScimError("PATCH needs a non-empty Operations list", scim_type="invalidSyntax")
    return ops


# -- discovery ----------------------------------------------------------------------------------------
def provider_config(cl: Citeline) -> ServiceProviderConfig:
    return ServiceProviderConfig(
        documentation_uri=None, patch=Patch(supported=True), bulk=Bulk(supported=False, max_operations=0,
                                                                         max_payload_size=0),
        filter=Filter(supported=True, max_results=cl.scim.config.max_results),
        change_password=ChangePassword(supported=False), sort=Sort(supported=False), etag=ETag(supported=False),
        authentication_schemes=[AuthenticationScheme(
            type="oauthbearertoken", name="Bearer token", primary=True,
            description="the secret token configured for the scim principal source")])


def resource_types_of(request: Request) -> list[ResourceType]:
    user = ResourceType.from_resource(UserModel)
    group = ResourceType.from_resource(Group)
    for rt in (user, group):
        rt.meta = Meta(resource_type="ResourceType",
                       location=str(request.url_for("scim_resource_type", resource_id=rt.id)))
    return [user, group]


def schemas_of(request: Request) -> list[Schema]:
    out = [User.to_schema(), Group.to_schema(), EnterpriseUser.to_schema()]
    for s in out:
        s.meta = Meta(resource_type="Schema", location=str(request.url_for("scim_schema", resource_id=s.id)))
    return out

