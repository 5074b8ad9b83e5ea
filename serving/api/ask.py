"""``POST /v1/ask``: question → answer, citations, refusal flag, latency (``stream``: Server-Sent Events)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from citeline.facade import AnswerStream
from citeline.serving.api.bodies import AskBody
from citeline.serving.api.deps import Auth, Facade, Meters
from citeline.serving.api.replies import STREAM_HEADERS, observe, sse, stream_failure
from citeline.serving.capacity import in_one_thread
from citeline.serving.metrics import Metrics

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/ask", response_model=None)
def ask(body: AskBody, who: Auth, request: Request, cl: Facade, metrics: Meters) -> JSONResponse | StreamingResponse:
    if body.stream:
        stream = cl.assistant.stream(body.question, who.principal, model=body.model)
        return StreamingResponse(in_one_thread(_ask_events(stream, request.state.auth_ms, metrics)),
                                 media_type="text/event-stream", headers=STREAM_HEADERS)
    answer = cl.assistant.ask(body.question, who.principal, model=body.model)
    observe(metrics, answer, request.state.auth_ms)
    return JSONResponse(answer.as_dict())  # plain JSON types already: no jsonable_encoder pass


def _ask_events(stream: AnswerStream, auth_ms: float, metrics: Metrics) -> Iterator[str]:
    yield sse({"sources": [c.as_dict() for c in stream.sources], "refused": stream.refused,
               "model": stream.model, "model_note": stream.model_note, "audit_id": stream.audit_id}, "sources")
    try:
        for delta in stream:
            yield sse({"text": delta}, "delta")
    except Exception as exc:  # the status line is gone: report in the stream, never end silently
        log.exception("answer stream failed")
        yield sse({"message": stream_failure(exc)}, "error")
        return
    assert stream.answer is not None
    observe(metrics, stream.answer, auth_ms)
    yield sse(stream.answer.as_dict(), "done")
