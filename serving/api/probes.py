"""Probes and metrics: never limited, and never waiting for a request slot or thread.

The probes are ``async``: they run on the event loop. ``/readyz`` checks the database over its own
connection (:class:`citeline.serving.capacity.ReadinessProbe`, ``app.state.readiness``), not the request pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from citeline.serving.api.deps import Facade, Meters

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, cl: Facade) -> JSONResponse:
    reason = await request.app.state.readiness.check()  # its own connection; server.probe_timeout_s
    if reason is not None:
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503,
                            headers={"Retry-After": str(cl.settings.server.retry_after_s)})
    return JSONResponse({"status": "ready", "backend": cl.backend.name})


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request, cl: Facade, metrics: Meters) -> Response:
    stats = cl.db.pool.get_stats()
    request_slots = request.app.state.request_slots
    metrics.pool_size.set(stats.get("pool_size", 0))
    metrics.pool_available.set(stats.get("pool_available", 0))
    metrics.pool_waiting.set(stats.get("requests_waiting", 0))
    metrics.requests_busy.set(request_slots.busy)
    metrics.requests_queued.set(request_slots.waiting)
    metrics.generations_busy.set(cl.assistant.slots.busy)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
