"""``/v1/rankings``: queue a ranking (one task per candidate and per control), read it back ranked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.auth import Owner, Submitter
from service.api.deps import CeleryDep, DatabaseDep, FinishedDep, LiveDep, QueuesDep, Reads, ReadsDep, SettingsDep
from service.api.schemas import EntryOut, ErrorOut, JobOut, RankingIn, RankingOut
from service.api.singleflight import single_flight
from service.core.cache import FinishedCache, LiveCache, up_to_date
from service.core.jobs import submit_ranking
from service.core.models import TERMINAL_JOB_STATUSES
from service.core.results import owned_ranking, ranking_views

router = APIRouter(prefix="/v1/rankings", tags=["rankings"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 429: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
async def create_ranking(
    body: RankingIn,
    response: Response,
    db: DatabaseDep,
    settings: SettingsDep,
    celery: CeleryDep,
    queues: QueuesDep,
    owner: Submitter,
) -> JobOut:
    """Queue BN-only evaluation of every checkpoint (plus a random-init control per architecture) on the dataset.

    One task per candidate (and per successive-halving round); the answer is the queued job, and ``Location``
    names the ranking to poll. Refused before anything is queued when a checkpoint or the dataset is not the
    caller's, the budget cannot run, or the broker is unreachable.
    """
    # Async, with the database and broker work in one thread-pool call: a sync endpoint with a session dependency
    # costs three thread hops (docs/benchmarks.md).
    params = body.params()

    def submit() -> JobOut:
        with db.sessions() as session:
            job = submit_ranking(
                session,
                celery,
                queues.queue_for("ranking"),
                owner,
                body.dataset_id,
                body.checkpoint_ids,
                params,
                max_candidates=settings.max_candidates,
                memory_bytes=settings.worker_memory_bytes,
            )
            return JobOut.model_validate(job)

    job = await run_in_threadpool(submit)
    response.headers["Location"] = f"/v1/rankings/{job.id}"
    return job


@router.get("/{job_id}", response_model=RankingOut, responses={404: {"model": ErrorOut}})
async def get_ranking(job_id: str, reads: ReadsDep, finished: FinishedDep, live: LiveDep, owner: Owner) -> Response:
    """The job and its entries: ranked ones best first, then failed or unfinished ones.

    A finished ranking never changes again, and it is what dashboards and clients re-read most, so its
    serialised body is kept in memory (per process) and served without touching the database. An
    unfinished one is read at most every ``BNRANK_LIVE_CACHE_S`` per process, however many clients poll it,
    and in the background once its body is older than that (no request waits for that read).
    """
    await up_to_date(finished.generation, finished, live)
    body = finished.get(job_id, owner)
    if body is None:
        cached = live.lookup(job_id, owner)
        key = f"{owner}\0{job_id}"
        if cached is None:
            body = await single_flight(live.loading, key, lambda: _read(reads, finished, live, owner, job_id))
        else:
            body, stale = cached
            if stale and key not in live.loading:  # one background read replaces it; this request is answered
                _refresh(single_flight(live.loading, key, lambda: _read(reads, finished, live, owner, job_id)))
    return Response(body, media_type="application/json")


_REFRESHING: set[asyncio.Task[Any]] = set()  # background reads, referenced until they end


def _refresh(read: Coroutine[Any, Any, bytes]) -> None:
    """Run a cache refresh in the background; its failure (a job deleted meanwhile) only loses the refresh."""

    async def quietly() -> None:
        with contextlib.suppress(Exception):
            await read

    task = asyncio.ensure_future(quietly())
    _REFRESHING.add(task)
    task.add_done_callback(_REFRESHING.discard)


async def _read(reads: Reads, finished: FinishedCache, live: LiveCache, owner: str, job_id: str) -> bytes:
    ranking = await reads(_ranking, owner, job_id)
    body = ranking.model_dump_json().encode()
    if ranking.job.status in TERMINAL_JOB_STATUSES:
        finished.put(job_id, owner, body)
        live.discard(job_id)
    else:
        live.put(job_id, owner, body)
    return body


def _ranking(session: Session, owner: str, job_id: str) -> RankingOut:
    job, entries = owned_ranking(session, owner, job_id)
    views, ties = ranking_views(job, entries)
    return RankingOut(
        job=JobOut.model_validate(job),
        entries=[EntryOut.model_validate(v) for v in views],
        stability=(job.result or {}).get("stability"),
        ties=ties,
        halving=(job.result or {}).get("halving"),
        cascade=(job.result or {}).get("cascade"),
    )
