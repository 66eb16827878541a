"""``/v1/rankings``: queue a ranking (one task per candidate and per control), read it back ranked."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Owner
from service.cache import FinishedCache
from service.deps import (
    UNPROCESSABLE,
    CeleryDep,
    SessionDep,
    SettingsDep,
    check_budget,
    in_session,
    not_found,
    owned_dataset,
    owned_job,
    submit_job,
)
from service.jobflow import ranking_entries
from service.models import TERMINAL_JOB_STATUSES, Checkpoint, GammaStat, Job, RankingEntry
from service.schemas import EntryOut, ErrorOut, JobOut, RankingIn, RankingOut

router = APIRouter(prefix="/v1/rankings", tags=["rankings"])


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
    check_budget(params)

    job = Job(owner=owner, kind="ranking", dataset_id=dataset.id, params=params, message="queued")
    job.entries = ranking_entries([found[c] for c in body.checkpoint_ids], body.control)
    submit_job(session, celery, settings, job)
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
async def get_ranking(job_id: str, request: Request, owner: Owner) -> Response:
    """The job and its entries: ranked ones best first, then failed or unfinished ones.

    A finished ranking never changes again, and it is what dashboards and clients re-read most, so its
    serialised body is kept in memory (per process) and served without touching the database.
    """
    cache: FinishedCache = request.app.state.finished_rankings
    body = cache.get(job_id, owner)
    if body is None:
        ranking = await in_session(request, _ranking, owner, job_id)
        body = ranking.model_dump_json().encode()
        if ranking.job.status in TERMINAL_JOB_STATUSES:
            cache.put(job_id, owner, body)
    return Response(body, media_type="application/json")


def _ranking(session: Session, owner: str, job_id: str) -> RankingOut:
    job = owned_job(session, owner, job_id, kind="ranking")
    # One query for entries and their γ summaries (a polled endpoint: round trips are its cost).
    rows = session.execute(
        select(RankingEntry, GammaStat.phase, GammaStat.summary)
        .outerjoin(GammaStat, GammaStat.entry_id == RankingEntry.id)
        .where(RankingEntry.job_id == job.id)
    ).all()
    by_id: dict[str, RankingEntry] = {}
    gamma: dict[str, dict[str, dict]] = {}
    for entry, phase, summary in rows:
        by_id[entry.id] = entry
        if phase is not None:
            gamma.setdefault(entry.id, {})[phase] = summary
    entries = list(by_id.values())
    entries.sort(key=lambda e: (e.rank is None, e.rank or 0, e.position))
    return RankingOut(
        job=JobOut.model_validate(job),
        entries=[entry_out(e, gamma.get(e.id, {})) for e in entries],
        stability=(job.result or {}).get("stability"),
    )
