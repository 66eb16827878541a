"""``/v1/alchemy``: queue network alchemy (one task per fold) and read back its per-fold results.

The engine's alchemy module is optional for the service: when it cannot be imported, both endpoints
answer 501 with the reason instead of failing at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from bnrank.engine.errors import BNRankError
from service.auth import Owner
from service.deps import (
    UNPROCESSABLE,
    CeleryDep,
    SessionDep,
    SettingsDep,
    in_session,
    not_found,
    owned_dataset,
    owned_job,
    submit_job,
)
from service.jobflow import train_config
from service.models import AlchemyResult, Checkpoint, GammaStat, Job
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
    ckpt = session.scalars(
        select(Checkpoint).where(Checkpoint.id == body.checkpoint_id, Checkpoint.owner == owner)
    ).first()
    if ckpt is None:
        raise not_found("checkpoint", body.checkpoint_id)
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
    try:
        train_config(params)
    except ValueError as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"budget: {exc}") from exc
    if body.folds > dataset.n_cases:
        raise HTTPException(
            UNPROCESSABLE,
            detail=f"folds: {body.folds} folds need at least as many cases; the dataset has {dataset.n_cases}",
        )
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
    gamma: dict[int, dict[str, dict]] = {}
    for fold, phase, summary in session.execute(
        select(GammaStat.fold, GammaStat.phase, GammaStat.summary).where(GammaStat.job_id == job.id)
    ):
        gamma.setdefault(fold or 0, {})[phase] = summary
    results = []
    for row in session.scalars(
        select(AlchemyResult).where(AlchemyResult.job_id == job.id).order_by(AlchemyResult.fold)
    ):
        out = AlchemyResultOut.model_validate(row)
        out.gamma = gamma.get(row.fold, {})
        results.append(out)
    return AlchemyOut(job=JobOut.model_validate(job), summary=job.result, results=results)
