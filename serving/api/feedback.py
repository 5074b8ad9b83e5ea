"""``POST /v1/feedback``: thumbs up or down, a reason and an optional corrected answer on one of the caller's
answers, named by its ``audit_id`` (in every answer: ``/v1/ask``, its stream's ``sources`` event, chat
completions).

Only the principal who asked may rate an answer: an id that names no answer and one that names another
principal's answer are both answered 404, so nothing is learned about other principals' answers. Giving
feedback again replaces it; every time, an audit row (kind ``feedback``) commits with it. Counted in
``/metrics`` as ``citeline_feedback`` by team, model (an adapter's served name holds its version) and rating.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import Field

from citeline.serving.api.bodies import _Body
from citeline.serving.api.deps import Auth, Facade, Meters

__all__ = ["FeedbackBody", "router"]

router = APIRouter()

_BIGINT = 2**63 - 1  # audit ids are bigint: anything larger names no row (and would not fit the query)


class FeedbackBody(_Body):
    audit_id: int = Field(ge=1, le=_BIGINT, description="the answer's audit_id")
    rating: Literal["up", "down"]
    reason: str = Field("", max_length=2000)
    correction: str | None = Field(None, max_length=16000, description="the answer as it should have been")


@router.post("/v1/feedback")
def give_feedback(body: FeedbackBody, who: Auth, cl: Facade, metrics: Meters) -> dict[str, Any]:
    saved = cl.feedback.give(body.audit_id, who.principal, rating=1 if body.rating == "up" else -1,
                             reason=body.reason, correction=body.correction)
    if saved is None:
        raise HTTPException(404, f"no answer with audit_id {body.audit_id} asked by you: feedback is given on your "
                                 "own answers, with the audit_id the answer carried")
    metrics.feedback.labels(saved.team or "", saved.model, body.rating,
                            "yes" if saved.correction is not None else "no").inc()
    return saved.as_dict()
