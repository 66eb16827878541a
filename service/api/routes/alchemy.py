"""``/v1/alchemy``: queue network alchemy (one task per fold) and read back its per-fold results.

The engine's alchemy module is optional for the service: when it cannot be imported, both endpoints
answer 501 with the reason instead of failing at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy.orm import Session

from bnrank.engine.errors import BNRankError
from service.auth import Owner
from service.deps import (
    UNPROCESSABLE,
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
from service.schemas import AlchemyIn, AlchemyOut, AlchemyResultOut, ErrorOut, JobOut

router = APIRouter(prefix="/v1/alchemy", tags=["alchemy"])

OPTION_FIELDS = (
    "mode",
    "identification",
    "modification",
    "maximization",
    "alpha",
    "beta",
    "lam",
    "threshold",
    "fraction",
    "identify_steps",
    "identify_lr",
)


def alchemy_engine() -> Any:
    """The engine's alchemy module, or 501 saying why it is not there."""
    try:
        return importlib.import_module("bnrank.engine.alchemy")
    except ImportError as exc:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED, detail=f"network alchemy is not available in this build: {exc}"
        ) from exc


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 501: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
def create_alchemy(
    body: AlchemyIn, response: Response, session: SessionDep, settings: SettingsDep, celery: CeleryDep, owner: Owner
) -> JobOut:
    """Identification → modification → maximization of one checkpoint on one dataset (or k folds of it)."""
    engine = alchemy_engine()
    dataset = owned_dataset(session, owner, body.dataset_id)
    ckpt = owned_checkpoint(session, owner, body.checkpoint_id)
    options = {name: getattr(body, name) for name in OPTION_FIELDS if getattr(body, name) is not None}
    try:
        engine.AlchemyOptions(**options)
    except BNRankError as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    params = {
        "budget": body.budget.model_dump(),
        "seed": body.seed,
        "folds": body.folds,
        "checkpoint_id": ckpt.id,
        "options": options,
    }
    check_budget(params)
    check_folds(body.folds, dataset)
    job = Job(owner=owner, kind="alchemy", dataset_id=dataset.id, params=params, message="queued")
    job.alchemy_results = [AlchemyResult(fold=i) for i in range(body.folds)]
    submit_job(session, celery, settings, job)
    response.headers["Location"] = f"/v1/alchemy/{job.id}"
    return JobOut.model_validate(job)


@router.get("/{job_id}", response_model=AlchemyOut, responses={404: {"model": ErrorOut}, 501: {"model": ErrorOut}})
async def get_alchemy(job_id: str, request: Request, owner: Owner) -> AlchemyOut:
    """The job, its summary over folds (``job.result``) and each fold's Dice, kernels re-initialised, γ
    summaries and the artifact id of its fine-tuned weights."""
    alchemy_engine()
    return await in_session(request, _alchemy, owner, job_id)


def _alchemy(session: Session, owner: str, job_id: str) -> AlchemyOut:
    job = owned_job(session, owner, job_id, kind="alchemy")
    results = []
    for row, gamma in fold_results(session, job.id):
        out = AlchemyResultOut.model_validate(row)
        out.gamma = gamma
        results.append(out)
    return AlchemyOut(job=JobOut.model_validate(job), summary=job.result, results=results)
