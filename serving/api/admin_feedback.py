"""``GET /v1/admin/feedback``: what users said about their answers, per team and model (an adapter's served name
holds its version), and the latest feedback rows. Admin only; reading it changes nothing, so it writes no audit
row. Only the asker may rate an answer (``POST /v1/feedback``): the admin page shows feedback, it does not give it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from citeline.serving.api.admin_models import FeedbackEntryOut, FeedbackPageOut, FeedbackSummaryOut
from citeline.serving.api.deps import Admin, Facade

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"])

Text = Annotated[str | None, Query(min_length=1, max_length=200)]


@router.get("/feedback")
def feedback(who: Admin, cl: Facade, team: Text = None, model: Text = None,
             rating: Literal["up", "down"] | None = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 50) -> FeedbackPageOut:
    """Up and down votes, corrections and up share per team and model (``team``, ``model`` narrow it), and the
    latest ``limit`` feedback rows (newest first; ``team``, ``model`` and ``rating`` narrow them)."""
    votes = None if rating is None else 1 if rating == "up" else -1
    rows = cl.feedback.recent(team=team, model=model, rating=votes, limit=limit)  # the core's bounds: the same
    summary = [s for s in cl.feedback.report(team=team) if model is None or s.model == model]
    return FeedbackPageOut(summary=[FeedbackSummaryOut(**vars(s)) for s in summary],
                           rows=[FeedbackEntryOut(**vars(r)) for r in rows])
