"""The support-assistant server: an OpenAI-compatible API, ``/v1/ask``, admin endpoints and the chat page.

``create_app(citeline)`` builds the FastAPI app over a :class:`citeline.Citeline` facade; ``citeline
serve`` runs it with uvicorn. Every request that retrieves authenticates an API key first and runs as
that key's principal (never as a user named in the request body). Endpoint handlers are plain ``def``:
FastAPI runs them in its thread pool, which matches the blocking database pool and model backends. The
probes are ``async`` and never wait for a request thread; every other request waits a bounded time for a
request slot, a generation slot, a pooled connection and its SQL locks, else it is answered 503 with
``Retry-After`` (:mod:`citeline.serving.capacity`). A stream is produced by one thread for its whole length.

==========================  ======  ==============================================================
``/``                       GET     the chat page (log in with an API key)
``/healthz`` ``/readyz``    GET     liveness; readiness (database reachable, backend built)
``/metrics``                GET     Prometheus text
``/v1/models``              GET     ``citeline`` (the grounded assistant) and the backend's models
``/v1/chat/completions``    POST    OpenAI chat completions; the last message (a user's) is the question
``/v1/ask``                 POST    question → answer, citations, refusal flag, latency (``stream``: SSE)
``/v1/admin/...``           *       keys, principals, audit verify/export (admin key)
==========================  ======  ==============================================================

Chat completions: the last message must be the user's question (422 otherwise, as for an empty one); the
user and assistant messages before it are the conversation, passed to the assistant as ``history`` (a
follow-up is rewritten for retrieval, earlier turns inform the answer). Clients' ``system``, ``developer``
and ``tool`` messages are ignored: citeline's rules are the only system message the model sees.
``max_tokens`` (or ``max_completion_tokens``) is capped at the server's ``generation.max_tokens``;
``temperature`` and ``stop`` (a string or up to 4) are passed on; ``finish_reason`` is the generation's.
Responses and chunks are the ``openai`` package's types plus citeline's fields (citations, sources,
refused, audit_id, verification, ``retrieval_question``, ...).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_message import ChatCompletionMessage
from openai.types.completion_usage import CompletionUsage
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from citeline.answers.assistant import Answer, AnswerStream
from citeline.facade import Citeline
from citeline.domain import Principal
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
from citeline.access.keys import Authenticated
from citeline.serving.capacity import Admission, ReadinessProbe, RequestSlots, in_one_thread
from citeline.contracts.generator import ChatMessage
from citeline.serving.limits import AUTH_STATE, Limits
from citeline.serving.metrics import Metrics

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)
_SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "Cache-Control": "no-store"}
ASSISTANT_MODEL = "citeline"


# -- request bodies -------------------------------------------------------------------------------
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")  # PostgreSQL cannot store NUL; a lone surrogate is not UTF-8


def _bad_text(value: Any, path: str) -> tuple[str, str] | None:
    """The first string under ``value`` (keys included) that cannot be stored or encoded: (its path, what)."""
    if isinstance(value, str):
        m = _BAD_TEXT.search(value)
        if m is None:
            return None
        c = m.group()
        return path, "a NUL byte (\\u0000)" if c == "\x00" else f"a lone surrogate (\\u{ord(c):04x})"
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and _BAD_TEXT.search(k):
                return path or "body", "a key with a NUL byte or a lone surrogate"
            if found := _bad_text(v, f"{path}.{k}" if path else str(k)):
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if found := _bad_text(v, f"{path}[{i}]"):
                return found
    return None


class _Body(BaseModel):
    """A request body: text that PostgreSQL or the tokenizers would fail on is refused here, naming the field
    (400 ``invalid_text``), so it never reaches a batch shared with other users' requests."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_storable(cls, data: Any) -> Any:
        if (found := _bad_text(data, "")) is not None:
            field, problem = found
            fix = "remove it" if "NUL" in problem else "send valid UTF-8 text (a \\ud800-\\udfff escape must be " \
                "half of a surrogate pair)"
            raise PydanticCustomError("invalid_text", "{field} contains {problem}; {fix}",
                                      {"field": field, "problem": problem, "fix": fix})
        return data


class AskBody(_Body):
    question: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(None, max_length=200)
    stream: bool = False


class ChatMessageBody(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatBody(_Body):
    model: str = Field(ASSISTANT_MODEL, max_length=200)
    messages: list[ChatMessageBody] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)  # capped at the server's generation.max_tokens
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if any(not s or len(s) > 200 for s in stops):
            raise ValueError("each stop sequence must be 1 to 200 characters")
        return stops


class KeyBody(_Body):
    user: str
    admin: bool = False
    label: str = ""


class PrincipalBody(_Body):
    user: str
    groups: list[str] = []
    team: str | None = None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return content or ""


def _error(status: int, message: str, kind: str, code: str | None = None,
           retry_after_s: int | None = None) -> JSONResponse:
    """Errors in OpenAI's shape, so the openai client raises its typed exceptions (and retries a 503 after
    ``Retry-After``)."""
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}}, status_code=status,
                        headers=headers)


def _chat_turns(messages: list[ChatMessageBody]) -> tuple[str, tuple[ChatMessage, ...]]:
    """The question (the last message, a user's) and the user/assistant turns before it.

    System, developer and tool messages from a client never become history: citeline's system prompt is
    the only one the model sees.
    """
    last = messages[-1]
    question = _text(last.content).strip()
    if last.role != "user" or not question:
        raise HTTPException(422, "the last message must be the user's question (role 'user', non-empty text)")
    history = tuple(ChatMessage(m.role, _text(m.content)) for m in messages[:-1]
                    if m.role in ("user", "assistant") and _text(m.content).strip())
    return question[:4000], history


def _chat_extras(answer: Answer) -> dict[str, Any]:
    """citeline's fields next to OpenAI's in a chat completion (and in the last stream chunk)."""
    return {"citations": [c.as_dict() for c in answer.citations], "sources": [c.as_dict() for c in answer.sources],
            "refused": answer.refused, "invalid_citations": answer.invalid_citations, "audit_id": answer.audit_id,
            "latency_ms": answer.latency_ms, "served_model": answer.model, "model_note": answer.model_note,
            "verified": answer.verified, "unsupported": [u.as_dict() for u in answer.unsupported],
            "verify_policy": answer.verify_policy, "fallback": answer.fallback,
            "retrieval_question": answer.retrieval_question or answer.question}


def _finish(answer: Answer) -> Literal["stop", "length"]:
    return "length" if answer.finish_reason == "length" else "stop"


def _usage(answer: Answer) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                           total_tokens=answer.prompt_tokens + answer.completion_tokens)


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _with_sources(answer_text: str, sources: list[dict[str, Any]]) -> str:
    if not sources:
        return answer_text
    lines = [f"[{c['n']}] {c['title']}" + (f" <{c['url']}>" if c["url"] else "") for c in sources]
    return answer_text + "\n\nSources:\n" + "\n".join(lines)


class _Edge:
    """Security headers, ``Server-Timing`` and request counts on every response.

    A plain ASGI middleware: ``@app.middleware("http")`` would run each request in an extra task and
    copy its body through a stream, which costs more than everything citeline does for a cached question.
    ``Server-Timing: app;dur=`` is what this process spent on the request up to its first byte, waiting
    for a request thread included (https://www.w3.org/TR/server-timing/).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def start(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers[name] = value
                headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
                route = scope.get("route")  # set by the router, which shares this scope
                self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, start)


def _principal(request: Request) -> Authenticated:
    """The caller's principal, from ``Authorization: Bearer cl_...`` (never from the request body).

    Under ``/v1`` the edge (:mod:`citeline.serving.limits`) looked the key up before reading the body and
    handed the result on; the lookup here is for routes outside it.
    """
    checked = request.scope.get("state", {}).get(AUTH_STATE)
    if checked is not None:
        request.state.auth_ms = checked[1]
        return checked[0]
    t0 = time.perf_counter()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    cl: Citeline = request.app.state.citeline
    who = cl.keys.authenticate(token if scheme.lower() == "bearer" else None)
    request.state.auth_ms = (time.perf_counter() - t0) * 1000  # reported with the answer's stage latencies
    return who


def _admin(who: Annotated[Authenticated, Depends(_principal)]) -> Authenticated:
    if not who.is_admin:
        raise HTTPException(403, "this endpoint needs an admin key (`citeline keys create --user U --admin`)")
    return who


Auth = Annotated[Authenticated, Depends(_principal)]
Admin = Annotated[Authenticated, Depends(_admin)]


def create_app(cl: Citeline) -> FastAPI:  # noqa: C901 - the routes read best together
    server = cl.settings.server
    retry_after = server.retry_after_s
    # Bounded waits (citeline.serving.capacity): request slots at the edge, generation slots in the
    # assistant, lock and statement timeouts on the request path's SQL, the pool's own timeout.
    cl.db.limit_requests(lock_timeout_s=cl.settings.database.lock_timeout_s,
                         statement_timeout_s=cl.settings.database.statement_timeout_s)
    admitted = server.max_concurrent_requests or cl.db.pool.max_size + cl.assistant.slots.limit
    request_slots = RequestSlots(admitted, server.queue_timeout_s, retry_after)
    readiness = ReadinessProbe(cl.db.url, server.probe_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # An admitted request holds at most one worker thread at a time (its stream, one thread for its
        # whole length): a few more threads than admitted requests means none waits for a thread.
        anyio.to_thread.current_default_thread_limiter().total_tokens = admitted + 4
        await anyio.to_thread.run_sync(lambda: cl.backend)  # built before the first probe (serve did already)
        yield
        await readiness.close()

    app = FastAPI(title="citeline", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    metrics = Metrics()
    app.state.citeline = cl
    app.state.metrics = metrics

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        for e in exc.errors():
            if e["type"] == "invalid_text":  # 400, not 422: the JSON is well formed, its text is not usable
                metrics.rejected.labels("bad_text").inc()
                return JSONResponse({"error": {"message": e["msg"], "type": "invalid_request_error",
                                               "code": "invalid_text", "param": e["ctx"]["field"]}}, status_code=400)
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return _error(422, f"invalid request: {problems}", "invalid_request_error")

    @app.exception_handler(AuthError)
    def _auth(request: Request, exc: AuthError) -> JSONResponse:
        metrics.auth_failures.inc()
        return _error(401, str(exc), "invalid_request_error", "invalid_api_key")

    @app.exception_handler(AuditError)
    async def _audit(request: Request, exc: AuditError) -> JSONResponse:
        return _error(503, str(exc), "server_error", "audit_unavailable", retry_after)

    @app.exception_handler(OverloadedError)
    async def _overloaded(request: Request, exc: OverloadedError) -> JSONResponse:
        return _error(503, str(exc), "server_error", "overloaded", retry_after)

    @app.exception_handler(psycopg.OperationalError)
    async def _sql_timeout(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        # a lock or statement timeout of the request's SQL (database.lock_timeout_s, statement_timeout_s),
        # or a connection lost mid-request: the request may succeed later
        log.warning("request SQL failed: %s: %s", type(exc).__name__, str(exc).strip()[:300])
        what = ("waited too long for a database lock (database.lock_timeout_s)"
                if isinstance(exc, psycopg.errors.LockNotAvailable) else
                "ran too long in the database (database.statement_timeout_s)"
                if isinstance(exc, psycopg.errors.QueryCanceled) else "lost its database connection")
        return _error(503, f"the request {what}; retry after {retry_after} s", "server_error",
                      "database_unavailable", retry_after)

    @app.exception_handler(GenerationError)
    def _gen(request: Request, exc: GenerationError) -> JSONResponse:
        status = 404 if isinstance(exc, ModelNotFoundError) else 502
        return _error(status, str(exc), "invalid_request_error" if status == 404 else "server_error",
                      "model_not_found" if status == 404 else "backend_error")

    @app.exception_handler(ForbiddenError)
    def _forbidden(request: Request, exc: ForbiddenError) -> JSONResponse:
        return _error(403, str(exc), "invalid_request_error", "forbidden")

    @app.exception_handler(DatabaseError)
    async def _db(request: Request, exc: DatabaseError) -> JSONResponse:
        return _error(503, str(exc), "server_error", "database_unavailable", retry_after)

    @app.exception_handler(CitelineError)
    def _other(request: Request, exc: CitelineError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error")

    app.add_middleware(Admission, slots=request_slots)  # inside Limits: refused requests take no slot
    app.add_middleware(Limits, settings=cl.settings.server, authenticate=cl.keys.authenticate, metrics=metrics,
                       lookups=cl.settings.database.pool_max_size)
    app.add_middleware(_Edge, metrics=metrics)  # outermost: its headers and counts cover Limits' answers too

    def observe(answer: Answer, auth_ms: float) -> None:
        answer.latency_ms["auth_ms"] = round(auth_ms, 2)  # the key lookup happened before the assistant ran
        metrics.observe_answer(answer.latency_ms, refused=answer.refused, shown=len(answer.sources),
                               invalid=answer.invalid_citations, policy=answer.verify_policy,
                               verified=answer.verified, fallback=answer.fallback,
                               unsupported=len(answer.unsupported))

    # -- probes, metrics, page ---------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    # Probes are async: they run on the event loop and never wait for a request slot or thread.
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = await readiness.check()  # its own connection, not the request pool; server.probe_timeout_s
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503,
                                headers={"Retry-After": str(retry_after)})
        return JSONResponse({"status": "ready", "backend": cl.backend.name})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        stats = cl.db.pool.get_stats()
        metrics.pool_size.set(stats.get("pool_size", 0))
        metrics.pool_available.set(stats.get("pool_available", 0))
        metrics.pool_waiting.set(stats.get("requests_waiting", 0))
        metrics.requests_busy.set(request_slots.busy)
        metrics.requests_queued.set(request_slots.waiting)
        metrics.generations_busy.set(cl.assistant.slots.busy)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- the assistant -----------------------------------------------------------------------------
    @app.get("/v1/models")
    def models(who: Auth) -> dict[str, Any]:
        now = int(time.time())
        base = cl.backend.base_model
        data = [{"id": ASSISTANT_MODEL, "object": "model", "created": now, "owned_by": "citeline", "root": base,
                 "parent": None}]
        for m in cl.backend.models():
            if not cl.router.may_use(who.principal, m):
                continue  # another team's adapter: not listed, not usable
            data.append({"id": m, "object": "model", "created": now, "owned_by": "citeline",
                         "root": base, "parent": None if m == base else base})
        return {"object": "list", "data": data}

    @app.post("/v1/ask", response_model=None)
    def ask(body: AskBody, who: Auth, request: Request) -> JSONResponse | StreamingResponse:
        if body.stream:
            stream = cl.assistant.stream(body.question, who.principal, model=body.model)
            return StreamingResponse(in_one_thread(_ask_events(stream, request.state.auth_ms)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        answer = cl.assistant.ask(body.question, who.principal, model=body.model)
        observe(answer, request.state.auth_ms)
        return JSONResponse(answer.as_dict())  # plain JSON types already: no jsonable_encoder pass

    def _ask_events(stream: AnswerStream, auth_ms: float) -> Iterator[str]:
        yield _sse({"sources": [c.as_dict() for c in stream.sources], "refused": stream.refused,
                    "model": stream.model, "model_note": stream.model_note, "audit_id": stream.audit_id}, "sources")
        try:
            for delta in stream:
                yield _sse({"text": delta}, "delta")
        except Exception as exc:  # the status line is gone: report in the stream, never end silently
            log.exception("answer stream failed")
            message = str(exc) if isinstance(exc, CitelineError) else "internal error while generating"
            yield _sse({"message": message}, "error")
            return
        assert stream.answer is not None
        observe(stream.answer, auth_ms)
        yield _sse(stream.answer.as_dict(), "done")

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: ChatBody, who: Auth, request: Request) -> JSONResponse | StreamingResponse:
        question, history = _chat_turns(body.messages)
        model = None if body.model == ASSISTANT_MODEL else body.model
        limit = body.max_tokens or body.max_completion_tokens
        options: dict[str, Any] = {
            "history": history, "temperature": body.temperature, "stop": tuple(body.stop or ()),
            "max_tokens": None if limit is None else min(limit, cl.settings.generation.max_tokens)}
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            stream = cl.assistant.stream(question, who.principal, model=model, **options)
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(in_one_thread(_chat_chunks(stream, cid, created, body.model,
                                                                request.state.auth_ms, usage)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        answer = cl.assistant.ask(question, who.principal, model=model, **options)
        observe(answer, request.state.auth_ms)
        extras = _chat_extras(answer)
        completion = ChatCompletion(
            id=cid, object="chat.completion", created=created, model=body.model,
            choices=[Choice(index=0, finish_reason=_finish(answer), logprobs=None, message=ChatCompletionMessage(
                role="assistant", content=_with_sources(answer.text, extras["citations"])))],
            usage=_usage(answer), **extras)
        return JSONResponse(completion.model_dump(mode="json", exclude_unset=True))

    def _chat_chunks(stream: AnswerStream, cid: str, created: int, model: str, auth_ms: float,
                     include_usage: bool = False) -> Iterator[str]:
        def chunk(delta: ChoiceDelta | None, finish: str | None = None, **extra: Any) -> str:
            choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
            c = ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created, model=model,
                                    choices=choices, **extra)
            return f"data: {c.model_dump_json(exclude_unset=True)}\n\n"

        yield chunk(ChoiceDelta(role="assistant", content=""))
        try:
            for delta in stream:
                yield chunk(ChoiceDelta(content=delta))
        except Exception as exc:  # the status line is gone: report in the stream, never end silently
            log.exception("chat stream failed")
            message = str(exc) if isinstance(exc, CitelineError) else "internal error while generating"
            yield _sse({"error": {"message": message, "type": "server_error", "code": "backend_error"}})
            return
        answer = stream.answer
        assert answer is not None
        observe(answer, auth_ms)
        extras = _chat_extras(answer)
        tail = _with_sources("", extras["citations"])
        if tail:
            yield chunk(ChoiceDelta(content=tail))
        yield chunk(ChoiceDelta(), _finish(answer), **extras)
        if include_usage:
            yield chunk(None, usage=_usage(answer))
        yield "data: [DONE]\n\n"

    # -- admin ---------------------------------------------------------------------------------------
    def actor(who: Authenticated) -> str:
        return f"{who.principal.user} (key {who.key_id})"

    @app.post("/v1/admin/keys")
    def create_key(body: KeyBody, who: Admin) -> dict[str, Any]:
        new = cl.create_key(body.user, actor=actor(who), admin=body.admin, label=body.label)
        return {"key_id": new.key.key_id, "user": body.user, "admin": body.admin, "key": new.secret}

    @app.delete("/v1/admin/keys/{key_id}")
    def revoke_key(key_id: str, who: Admin) -> dict[str, Any]:
        if not cl.revoke_key(key_id, actor=actor(who)):
            raise HTTPException(404, f"no active key {key_id}")
        return {"key_id": key_id, "revoked": True}

    @app.put("/v1/admin/principals")
    def put_principal(body: PrincipalBody, who: Admin) -> dict[str, Any]:
        try:
            p = cl.add_principal(Principal(body.user, tuple(body.groups), body.team), actor=actor(who))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"user": p.user, "groups": list(p.groups), "team": p.team}

    @app.delete("/v1/admin/principals/{user}")
    def delete_principal(user: str, who: Admin) -> dict[str, Any]:
        revoked = cl.delete_principal(user, actor=actor(who))
        if revoked is None:
            raise HTTPException(404, f"no principal named {user!r}")
        return {"user": user, "removed": True, "revoked_keys": revoked}

    @app.get("/v1/admin/audit/verify")
    def audit_verify(who: Admin) -> dict[str, Any]:
        return cl.audit.verify().as_dict()

    @app.get("/v1/admin/audit/export")
    def audit_export(who: Admin, format: Literal["jsonl", "csv"] = "jsonl", since: str | None = None) -> Response:
        from datetime import datetime

        try:
            when = datetime.fromisoformat(since) if since else None
        except ValueError as exc:
            raise HTTPException(422, f"since must be an ISO date or time, not {since!r}") from exc
        media = "application/x-ndjson" if format == "jsonl" else "text/csv"
        return PlainTextResponse("".join(cl.audit.export(format, since=when)), media_type=media)

    return app
