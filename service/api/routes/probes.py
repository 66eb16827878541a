"""``/v1/probes``: the γ-clipping probe (thesis Fig. 3.1) as a job, one task per fold.

Before trusting alchemy's "small γ = redundant kernel" on a new dataset, a user can check it: if zeroing
the small γ costs far less Dice than zeroing as many random γ, the γ ranking means something there.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from service.auth import Owner
from service.deps import (
    CeleryDep,
    SessionDep,
    SettingsDep,
    check_budget,
    check_folds,
    fold_results,
    in_session,
    owned_checkpoint,
    owned_dataset,
    owned_job,
    submit_job,
)
from service.models import AlchemyResult, Job
from service.schemas import ErrorOut, JobOut, ProbeFoldOut, ProbeIn, ProbeOut

router = APIRouter(prefix="/v1/probes", tags=["probes"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
def create_probe(
    body: ProbeIn, response: Response, session: SessionDep, settings: SettingsDep, celery: CeleryDep, owner: Owner
) -> JobOut:
    """Queue BN-only training of one checkpoint, then clipping by threshold and at random."""
    dataset = owned_dataset(session, owner, body.dataset_id)
    ckpt = owned_checkpoint(session, owner, body.checkpoint_id)
    check_folds(body.folds, dataset)
    params = {
        "budget": body.budget.model_dump(),
        "seed": body.seed,
        "folds": body.folds,
        "checkpoint_id": ckpt.id,
        "thresholds": body.thresholds,
        "draws": body.draws,
    }
    check_budget(params)
    job = Job(owner=owner, kind="probe", dataset_id=dataset.id, params=params, message="queued")
    job.alchemy_results = [AlchemyResult(fold=i) for i in range(body.folds)]
    submit_job(session, celery, settings, job)
    response.headers["Location"] = f"/v1/probes/{job.id}"
    return JobOut.model_validate(job)


@router.get("/{job_id}", response_model=ProbeOut, responses={404: {"model": ErrorOut}})
async def get_probe(job_id: str, request: Request, owner: Owner) -> ProbeOut:
    """The job and, per fold, the unclipped Dice and one row per threshold: Dice clipped by |γ| vs at random."""
    return await in_session(request, _probe, owner, job_id)


def _probe(session: Session, owner: str, job_id: str) -> ProbeOut:
    job = owned_job(session, owner, job_id, kind="probe")
    folds = []
    for row, gamma in fold_results(session, job.id):
        probe = (row.metrics or {}).get("probe") or {}
        folds.append(
            ProbeFoldOut(
                fold=row.fold,
                status=row.status,  # type: ignore[arg-type]
                progress=row.progress,
                dice_unclipped=probe.get("dice_unclipped"),
                n_channels=probe.get("n_channels"),
                rows=probe.get("rows", []),
                bn_only=probe.get("bn_only", {}),
                gamma=gamma,
                seconds=probe.get("seconds"),
                error=row.error,
            )
        )
    return ProbeOut(job=JobOut.model_validate(job), folds=folds)
