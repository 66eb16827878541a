"""``/v1/jobs``: list, get, cancel, and a server-sent-event stream of a job's progress."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import StreamingResponse

from service.api.auth import Owner
from service.api.deps import Limit, LiveDep, Offset, ReadsDep, SessionDep, SettingsDep
from service.api.schemas import ErrorOut, JobOut, JobStatus, Page
from service.core import jobflow
from service.core.errors import NotFound
from service.core.kinds import KIND_NAMES
from service.core.models import TERMINAL_JOB_STATUSES
from service.core.owned import owned_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0


@router.get("", response_model=Page[JobOut])
def list_jobs(
    session: SessionDep,
    owner: Owner,
    limit: Limit = 50,
    offset: Offset = 0,
    status_: Annotated[
        JobStatus | None, Query(alias="status")
    ] = None,
    kind: Annotated[Literal[KIND_NAMES] | None, Query()] = None,  # type: ignore[valid-type]
) -> Page[JobOut]:
    rows, total = jobflow.list_jobs(session, owner, limit, offset, status_, kind)
    return Page(items=[JobOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
async def get_job(job_id: str, reads: ReadsDep, owner: Owner) -> JobOut:
    return await reads(lambda s: JobOut.model_validate(owned_job(s, owner, job_id)))


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut, "description": "the job already ended"}},
)
def cancel_job(job_id: str, session: SessionDep, live: LiveDep, owner: Owner) -> JobOut:
    """Queued work is dropped now; a running task stops at its next step and the job ends ``cancelled``."""
    job = jobflow.cancel_job(session, owner, job_id)
    live.discard(job_id)
    return JobOut.model_validate(job)


def _event(name: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get(
    "/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "'progress' events, then one 'end' event"},
        404: {"model": ErrorOut},
    },
)
async def job_events(
    job_id: str, request: Request, reads: ReadsDep, settings: SettingsDep, owner: Owner
) -> StreamingResponse:
    """Server-sent events: a ``progress`` event whenever the job changes, ``end`` when it finished."""
    first = await reads(jobflow.job_snapshot, owner, job_id)
    if first is None:
        raise NotFound("job", job_id)
    interval = settings.sse_poll_interval_s

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
            snapshot = await reads(jobflow.job_snapshot, owner, job_id)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
