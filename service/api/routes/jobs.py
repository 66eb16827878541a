"""``/v1/jobs``: list, get, cancel, and a server-sent-event stream of a job's progress."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.auth import Owner
from service.deps import Limit, Offset, SessionDep, in_session, not_found, owned_job
from service.jobflow import request_cancel
from service.models import TERMINAL_JOB_STATUSES, AlchemyResult, Job, RankingEntry
from service.schemas import ErrorOut, JobOut, Page

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0


@router.get("", response_model=Page[JobOut])
def list_jobs(
    session: SessionDep,
    owner: Owner,
    limit: Limit = 50,
    offset: Offset = 0,
    status_: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query(alias="status")
    ] = None,
    kind: Annotated[Literal["ranking", "alchemy", "probe"] | None, Query()] = None,
) -> Page[JobOut]:
    where = [Job.owner == owner]
    if status_:
        where.append(Job.status == status_)
    if kind:
        where.append(Job.kind == kind)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    )
    return Page(items=[JobOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
async def get_job(job_id: str, request: Request, owner: Owner) -> JobOut:
    return await in_session(request, lambda s: JobOut.model_validate(owned_job(s, owner, job_id)))


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut, "description": "the job already ended"}},
)
def cancel_job(job_id: str, session: SessionDep, owner: Owner) -> JobOut:
    """Queued work is dropped now; a running task stops at its next step and the job ends ``cancelled``."""
    job = owned_job(session, owner, job_id)
    if job.status in TERMINAL_JOB_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id!r} already ended: {job.status}")
    request_cancel(session, job)
    session.commit()
    return JobOut.model_validate(job)


def _snapshot(session: Session, owner: str, job_id: str) -> dict[str, Any] | None:
    """What an event carries: the job's state and each unit of work's (candidates, or alchemy folds)."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).first()
    if job is None:
        return None
    if job.kind == "ranking":
        label, order = RankingEntry.name, RankingEntry.position
        work = select(label, RankingEntry.status, RankingEntry.progress).where(RankingEntry.job_id == job_id)
    else:
        label, order = AlchemyResult.fold, AlchemyResult.fold
        work = select(label, AlchemyResult.status, AlchemyResult.progress).where(AlchemyResult.job_id == job_id)
    rows = session.execute(work.order_by(order)).all()
    return {
        "id": job.id,
        "status": job.status,
        "progress": round(job.progress, 4),
        "message": job.message,
        "error": job.error,
        "entries": [
            {"name": name if job.kind == "ranking" else f"fold {name}", "status": s, "progress": round(p, 4)}
            for name, s, p in rows
        ],
    }


def _event(name: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get(
    "/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "'progress' events, then one 'end' event"},
        404: {"model": ErrorOut},
    },
)
async def job_events(job_id: str, request: Request, owner: Owner) -> StreamingResponse:
    """Server-sent events: a ``progress`` event whenever the job changes, ``end`` when it finished."""
    first = await in_session(request, _snapshot, owner, job_id)
    if first is None:
        raise not_found("job", job_id)
    interval: float = request.app.state.settings.sse_poll_interval_s

    async def stream() -> AsyncIterator[str]:
        snapshot: dict[str, Any] | None = first
        last: dict[str, Any] | None = None
        event_id, quiet_since = 0, time.monotonic()
        yield "retry: 2000\n\n"
        while snapshot is not None:
            if snapshot != last:
                event_id += 1
                yield _event("progress", snapshot, event_id)
                last, quiet_since = snapshot, time.monotonic()
            if snapshot["status"] in TERMINAL_JOB_STATUSES:
                yield _event("end", snapshot, event_id + 1)
                return
            if time.monotonic() - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"  # proxies close connections that stay silent
                quiet_since = time.monotonic()
            await asyncio.sleep(interval)
            if await request.is_disconnected():
                return
            snapshot = await in_session(request, _snapshot, owner, job_id)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
