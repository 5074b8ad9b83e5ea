"""What the answering routes share: Server-Sent Events, answer metrics, what a failed stream says."""

from __future__ import annotations

import json
from typing import Any

from citeline.errors import CitelineError
from citeline.facade import Answer
from citeline.serving.metrics import Metrics

__all__ = ["STREAM_HEADERS", "observe", "sse", "stream_failure"]

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def observe(metrics: Metrics, answer: Answer, auth_ms: float) -> None:
    """Record an answer's stage latencies (the key lookup included) and outcome in the metrics."""
    answer.latency_ms["auth_ms"] = round(auth_ms, 2)  # the key lookup happened before the assistant ran
    metrics.observe_answer(answer.latency_ms, refused=answer.refused, shown=len(answer.sources),
                           invalid=answer.invalid_citations, policy=answer.verify_policy,
                           verified=answer.verified, fallback=answer.fallback,
                           unsupported=len(answer.unsupported), cache=answer.cache)


def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream_failure(exc: Exception) -> str:
    """What a stream reports when it fails after its status line was sent (no internals unless citeline's)."""
    return str(exc) if isinstance(exc, CitelineError) else "internal error while generating"
