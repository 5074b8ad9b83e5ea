"""Errors in OpenAI's shape, so the openai client raises its typed exceptions (and retries a 503 after
``Retry-After``): ``{"error": {"message", "type", "code", "param"}}``.

:func:`install` registers one handler per exception of :mod:`citeline.errors` (plus HTTP, validation and
SQL-timeout errors). Handlers that answer under overload (503s) are ``async``, so they never wait for a
worker thread.
"""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from citeline.errors import (
    AuditError,
    AuthError,
    CitelineError,
    DatabaseError,
    ForbiddenError,
    GenerationError,
    ModelNotFoundError,
    OverloadedError,
)

__all__ = ["error", "install"]

log = logging.getLogger(__name__)


def error(status: int, message: str, kind: str, code: str | None = None,
          retry_after_s: int | None = None) -> JSONResponse:
    """An error response in OpenAI's shape (with ``Retry-After`` when ``retry_after_s`` is given)."""
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}}, status_code=status,
                        headers=headers)


def _retry_after(request: Request) -> int:
    return int(request.app.state.citeline.settings.server.retry_after_s)


def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error(exc.status_code, str(exc.detail), kind)


def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    for e in exc.errors():
        if e["type"] == "invalid_text":  # 400, not 422: the JSON is well formed, its text is not usable
            request.app.state.metrics.rejected.labels("bad_text").inc()
            return JSONResponse({"error": {"message": e["msg"], "type": "invalid_request_error",
                                           "code": "invalid_text", "param": e["ctx"]["field"]}}, status_code=400)
    problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
    return error(422, f"invalid request: {problems}", "invalid_request_error")


def _auth(request: Request, exc: AuthError) -> JSONResponse:
    request.app.state.metrics.auth_failures.inc()
    return error(401, str(exc), "invalid_request_error", "invalid_api_key")


async def _audit(request: Request, exc: AuditError) -> JSONResponse:
    return error(503, str(exc), "server_error", "audit_unavailable", _retry_after(request))


async def _overloaded(request: Request, exc: OverloadedError) -> JSONResponse:
    return error(503, str(exc), "server_error", "overloaded", _retry_after(request))


async def _sql_timeout(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
    # a lock or statement timeout of the request's SQL (database.lock_timeout_s, statement_timeout_s),
    # or a connection lost mid-request: the request may succeed later
    log.warning("request SQL failed: %s: %s", type(exc).__name__, str(exc).strip()[:300])
    what = ("waited too long for a database lock (database.lock_timeout_s)"
            if isinstance(exc, psycopg.errors.LockNotAvailable) else
            "ran too long in the database (database.statement_timeout_s)"
            if isinstance(exc, psycopg.errors.QueryCanceled) else "lost its database connection")
    retry_after = _retry_after(request)
    return error(503, f"the request {what}; retry after {retry_after} s", "server_error",
                 "database_unavailable", retry_after)


def _gen(request: Request, exc: GenerationError) -> JSONResponse:
    status = 404 if isinstance(exc, ModelNotFoundError) else 502
    return error(status, str(exc), "invalid_request_error" if status == 404 else "server_error",
                 "model_not_found" if status == 404 else "backend_error")


def _forbidden(request: Request, exc: ForbiddenError) -> JSONResponse:
    return error(403, str(exc), "invalid_request_error", "forbidden")


async def _db(request: Request, exc: DatabaseError) -> JSONResponse:
    return error(503, str(exc), "server_error", "database_unavailable", _retry_after(request))


def _other(request: Request, exc: CitelineError) -> JSONResponse:
    return error(400, str(exc), "invalid_request_error")


_HANDLERS = ((StarletteHTTPException, _http), (RequestValidationError, _invalid), (AuthError, _auth),
             (AuditError, _audit), (OverloadedError, _overloaded), (psycopg.OperationalError, _sql_timeout),
             (GenerationError, _gen), (ForbiddenError, _forbidden), (DatabaseError, _db), (CitelineError, _other))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app`` (its ``state.citeline`` and ``state.metrics`` are read per error)."""
    for exc_class, handler in _HANDLERS:
        app.add_exception_handler(exc_class, handler)  # type: ignore[arg-type]
