"""``/v1/rankings``: queue a ranking (one task per candidate and per control), read it back ranked."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Owner
from service.deps import UNPROCESSABLE, CeleryDep, SessionDep, SettingsDep, not_found, owned_dataset, owned_job
from service.jobflow import ranking_entries, train_config
from service.models import Checkpoint, GammaStat, Job, RankingEntry, utcnow
from service.schemas import EntryOut, ErrorOut, JobOut, RankingIn, RankingOut
from worker.celery_app import TASK_RANK_ENTRY

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/rankings", tags=["rankings"])


def mark_enqueue_failed(session: Session, job: Job, exc: Exception) -> HTTPException:
    """The broker refused the tasks: the job can never run, so say so on the row and to the caller."""
    log.error("cannot enqueue job %s: %s", job.id, exc)
    session.rollback()
    job.status, job.error, job.finished_at = "failed", f"could not be queued: broker unreachable ({exc})", utcnow()
    session.commit()
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the task broker is unreachable: {exc}")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
def create_ranking(
    body: RankingIn, response: Response, session: SessionDep, settings: SettingsDep, celery: CeleryDep, owner: Owner
) -> JobOut:
    """Queue BN-only evaluation of every checkpoint (plus a random-init control per architecture)."""
    if len(body.checkpoint_ids) > settings.max_candidates:
        raise HTTPException(
            UNPROCESSABLE, detail=f"checkpoint_ids: at most {settings.max_candidates} candidates per ranking"
        )
    dataset = owned_dataset(session, owner, body.dataset_id)
    found = {
        c.id: c
        for c in session.scalars(
            select(Checkpoint).where(Checkpoint.id.in_(body.checkpoint_ids), Checkpoint.owner == owner)
        )
    }
    missing = [c for c in body.checkpoint_ids if c not in found]
    if missing:
        raise not_found("checkpoint", ", ".join(missing))
    params = {"budget": body.budget.model_dump(), "seed": body.seed, "control": body.control}
    try:
        train_config(params)
    except ValueError as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"budget: {exc}") from exc

    job = Job(owner=owner, kind="ranking", dataset_id=dataset.id, params=params, message="queued")
    job.entries = ranking_entries([found[c] for c in body.checkpoint_ids], body.control)
    # Task ids are chosen here so the job row is complete in one commit, before any task can start.
    tasks = [(str(uuid.uuid4()), entry) for entry in job.entries]
    job.task_ids = [task_id for task_id, _ in tasks]
    session.add(job)
    session.commit()
    try:
        for task_id, entry in tasks:
            celery.send_task(TASK_RANK_ENTRY, args=[job.id, entry.id], task_id=task_id, queue=settings.queue)
    except Exception as exc:  # kombu raises a zoo of connection errors
        raise mark_enqueue_failed(session, job, exc) from exc
    response.headers["Location"] = f"/v1/rankings/{job.id}"
    return JobOut.model_validate(job)


def entry_out(entry: RankingEntry, gamma: dict[str, dict]) -> EntryOut:
    return EntryOut(
        id=entry.id,
        rank=entry.rank,
        name=entry.name,
        checkpoint_id=entry.checkpoint_id,
        is_control=entry.is_control,
        architecture=entry.architecture,
        status=entry.status,  # type: ignore[arg-type]
        score=entry.score,
        dice_per_class=dict(entry.dice_per_class or {}),
        gamma=gamma,
        steps=entry.steps,
        seconds=entry.seconds,
        progress=entry.progress,
        curve=list(entry.curve or []),
        error=entry.error,
    )


@router.get("/{job_id}", response_model=RankingOut, responses={404: {"model": ErrorOut}})
def get_ranking(job_id: str, session: SessionDep, owner: Owner) -> RankingOut:
    """The job and its entries: ranked ones best first, then failed or unfinished ones."""
    job = owned_job(session, owner, job_id, kind="ranking")
    entries = list(session.scalars(select(RankingEntry).where(RankingEntry.job_id == job.id)))
    gamma: dict[str, dict[str, dict]] = {}
    for entry_id, phase, summary in session.execute(
        select(GammaStat.entry_id, GammaStat.phase, GammaStat.summary).where(GammaStat.job_id == job.id)
    ):
        gamma.setdefault(entry_id, {})[phase] = summary
    entries.sort(key=lambda e: (e.rank is None, e.rank or 0, e.position))
    return RankingOut(
        job=JobOut.model_validate(job),
        entries=[entry_out(e, gamma.get(e.id, {})) for e in entries],
        stability=(job.result or {}).get("stability"),
    )
