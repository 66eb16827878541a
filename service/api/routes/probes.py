"""``/v1/probes``: the γ-clipping probe (thesis Fig. 3.1) as a job, one task per fold.

Before trusting alchemy's "small γ = redundant kernel" on a new dataset, a user can check it: if zeroing
the small γ costs far less Dice than zeroing as many random γ, the γ ranking means something there.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from service.api.auth import Owner, Submitter
from service.api.deps import CeleryDep, QueuesDep, ReadsDep, SessionDep, SettingsDep
from service.api.schemas import ErrorOut, JobOut, ProbeFoldOut, ProbeIn, ProbeOut
from service.core.jobs import submit_folds
from service.core.owned import owned_job
from service.core.results import fold_rows, probe_view

router = APIRouter(prefix="/v1/probes", tags=["probes"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 429: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
def create_probe(
    body: ProbeIn,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    queues: QueuesDep,
    owner: Submitter,
) -> JobOut:
    """Queue BN-only training of one checkpoint, then clipping by threshold and at random."""
    job = submit_folds(
        session,
        celery,
        queues.queue_for("probe"),
        owner,
        "probe",
        body.dataset_id,
        body.params(),
        memory_bytes=settings.worker_memory_bytes,
    )
    response.headers["Location"] = f"/v1/probes/{job.id}"
    return JobOut.model_validate(job)


@router.get("/{job_id}", response_model=ProbeOut, responses={404: {"model": ErrorOut}})
async def get_probe(job_id: str, reads: ReadsDep, owner: Owner) -> ProbeOut:
    """The job and, per fold, the unclipped Dice and one row per threshold: Dice clipped by |γ| vs at random."""
    return await reads(_probe, owner, job_id)


def _probe(session: Session, owner: str, job_id: str) -> ProbeOut:
    job = owned_job(session, owner, job_id, kind="probe")
    folds = [ProbeFoldOut.model_validate(probe_view(row, gamma)) for row, gamma in fold_rows(session, job.id)]
    return ProbeOut(job=JobOut.model_validate(job), folds=folds)
