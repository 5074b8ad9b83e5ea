"""The OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Chat completions: the last message must be the user's question (422 otherwise, as for an empty one); the
user and assistant messages before it are the conversation, passed to the assistant as ``history``.
Clients' ``system``, ``developer`` and ``tool`` messages are ignored: citeline's rules are the only system
message the model sees. ``max_tokens`` (or ``max_completion_tokens``) is capped at the server's
``generation.max_tokens``. Responses and chunks are the ``openai`` package's types plus citeline's fields.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_message import ChatCompletionMessage
from openai.types.completion_usage import CompletionUsage

from citeline.contracts.generator import ChatMessage
from citeline.facade import Answer, AnswerStream
from citeline.serving.api.bodies import ASSISTANT_MODEL, ChatBody, ChatMessageBody
from citeline.serving.api.deps import Auth, Facade, Meters
from citeline.serving.api.replies import STREAM_HEADERS, observe, sse, stream_failure
from citeline.serving.capacity import in_one_thread
from citeline.serving.metrics import Metrics

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/v1/models")
def models(who: Auth, cl: Facade) -> dict[str, Any]:
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


@router.post("/v1/chat/completions", response_model=None)
def chat(body: ChatBody, who: Auth, request: Request, cl: Facade, metrics: Meters) -> JSONResponse | StreamingResponse:
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
        chunks = _chat_chunks(stream, cid, created, body.model, request.state.auth_ms, metrics, usage)
        return StreamingResponse(in_one_thread(chunks), media_type="text/event-stream", headers=STREAM_HEADERS)
    answer = cl.assistant.ask(question, who.principal, model=model, **options)
    observe(metrics, answer, request.state.auth_ms)
    extras = _chat_extras(answer)
    completion = ChatCompletion(
        id=cid, object="chat.completion", created=created, model=body.model,
        choices=[Choice(index=0, finish_reason=_finish(answer), logprobs=None, message=ChatCompletionMessage(
            role="assistant", content=_with_sources(answer.text, extras["citations"])))],
        usage=_usage(answer), **extras)
    return JSONResponse(completion.model_dump(mode="json", exclude_unset=True))


def _chat_chunks(stream: AnswerStream, cid: str, created: int, model: str, auth_ms: float, metrics: Metrics,
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
        yield sse({"error": {"message": stream_failure(exc), "type": "server_error", "code": "backend_error"}})
        return
    answer = stream.answer
    assert answer is not None
    observe(metrics, answer, auth_ms)
    extras = _chat_extras(answer)
    tail = _with_sources("", extras["citations"])
    if tail:
        yield chunk(ChoiceDelta(content=tail))
    yield chunk(ChoiceDelta(), _finish(answer), **extras)
    if include_usage:
        yield chunk(None, usage=_usage(answer))
    yield "data: [DONE]\n\n"


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return content or ""


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
            "verify_policy": answer.verify_policy, "fallback": answer.fallback, "cached": answer.cached,
            "retrieval_question": answer.retrieval_question or answer.question}


def _finish(answer: Answer) -> Literal["stop", "length"]:
    return "length" if answer.finish_reason == "length" else "stop"


def _usage(answer: Answer) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                           total_tokens=answer.prompt_tokens + answer.completion_tokens)


def _where(c: dict[str, Any]) -> str:
    """A citation's title, and its section when that adds something ("Travel expenses, Page 2")."""
    section = c.get("section") or ""
    last = section.rsplit(" / ", 1)[-1]
    return f"{c['title']}, {last}" if last and last != c["title"] else c["title"]


def _with_sources(answer_text: str, sources: list[dict[str, Any]]) -> str:
    if not sources:
        return answer_text
    lines = [f"[{c['n']}] {_where(c)}" + (f" <{c['url']}>" if c["url"] else "") for c in sources]
    return answer_text + "\n\nSources:\n" + "\n".join(lines)
