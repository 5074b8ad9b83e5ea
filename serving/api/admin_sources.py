"""``/v1/admin/sources...``: every source's status (documents, last and next run, counts, last error), sync now
(in the background: the run's id at once), and a run's status. Admin only."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from citeline.errors import ConfigError, SyncLockedError
from citeline.serving.api.admin_models import RunOut, SourceOut, SyncBody, SyncStartedOut
from citeline.serving.api.deps import Admin, Facade, actor

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin/sources", tags=["admin"])


@router.get("")
def list_sources(who: Admin, cl: Facade) -> list[SourceOut]:
    runs = cl.sync_jobs.latest_ids()
    return [SourceOut(**vars(s), last_run_id=runs.get(s.name)) for s in cl.sources.status()]


@router.post("/{name}/sync", status_code=202)
def sync_now(name: str, who: Admin, cl: Facade, body: SyncBody | None = None) -> SyncStartedOut:
    """Start syncing ``name`` in the background (audited first); poll the run at ``status_url``."""
    if name not in {s.name for s in cl.settings.sources}:
        raise HTTPException(404, f"no configured source named {name[:200]!r}")
    try:
        run_id = cl.sync_jobs.start(name, actor=actor(who), full=body.full if body else False)
    except SyncLockedError as exc:
        raise HTTPException(409, str(exc)) from exc
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from exc
    return SyncStartedOut(source=name, run_id=run_id, status_url=f"/v1/admin/sources/runs/{run_id}")


@router.get("/runs/{run_id}")
def run_status(run_id: int, who: Admin, cl: Facade) -> RunOut:
    run = cl.sync_jobs.run(run_id) if 0 < run_id < 2**63 else None
    if run is None:
        raise HTTPException(404, f"no sync run {run_id}")
    return RunOut(**vars(run))  # each failure (a dict) validated as a FailureOut
