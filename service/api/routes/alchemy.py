"""``/v1/alchemy``: queue network alchemy (one task per fold) and read back its per-fold results."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from service.api.auth import Owner, Submitter
from service.api.deps import CeleryDep, QueuesDep, ReadsDep, SessionDep, SettingsDep
from service.api.schemas import AlchemyIn, AlchemyOut, AlchemyResultOut, ErrorOut, JobOut
from service.core.jobs import submit_folds
from service.core.owned import owned_job
from service.core.results import alchemy_view, fold_rows

router = APIRouter(prefix="/v1/alchemy", tags=["alchemy"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 429: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
def create_alchemy(
    body: AlchemyIn,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    queues: QueuesDep,
    owner: Submitter,
) -> JobOut:
    """Identification → modification → maximization of one checkpoint on one dataset (or k folds of it)."""
    job = submit_folds(
        session,
        celery,
        queues.queue_for("alchemy"),
        owner,
        "alchemy",
        body.dataset_id,
        body.params(),
        memory_bytes=settings.worker_memory_bytes,
    )
    response.headers["Location"] = f"/v1/alchemy/{job.id}"
    return JobOut.model_validate(job)


@router.get("/{job_id}", response_model=AlchemyOut, responses={404: {"model": ErrorOut}})
async def get_alchemy(job_id: str, reads: ReadsDep, owner: Owner) -> AlchemyOut:
    """The job, its summary over folds (``job.result``) and each fold's Dice, kernels re-initialised, γ
    summaries and the artifact id of its fine-tuned weights."""
    return await reads(_alchemy, owner, job_id)


def _alchemy(session: Session, owner: str, job_id: str) -> AlchemyOut:
    job = owned_job(session, owner, job_id, kind="alchemy")
    results = [AlchemyResultOut.model_validate(alchemy_view(row, gamma)) for row, gamma in fold_rows(session, job.id)]
    return AlchemyOut(job=JobOut.model_validate(job), summary=job.result, results=results)
