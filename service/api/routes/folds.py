"""The routes of a job kind run once per fold on one checkpoint (alchemy, probe): queue it, read it back.

Each kind's module (routes/alchemy.py, routes/probes.py) is one call of `fold_router` with its request and
response models and the docs the OpenAPI document shows; the path, the kind's name and its fold table come
from the kind's declaration (service/core/kinds/).
"""

# No ``from __future__ import annotations``: the endpoints below are built per kind, and FastAPI reads their
# parameter and return types from the annotations as objects.

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.api.auth import Owner, Submitter
from service.api.deps import CeleryDep, QueuesDep, ReadsDep, SessionDep, SettingsDep
from service.api.schemas import ErrorOut, JobOut
from service.core.jobs import submit_folds
from service.core.kinds.base import JobKind
from service.core.models import Job
from service.core.owned import owned_job
from service.core.results import GammaByPhase, fold_rows

Shape = Callable[[Job, list[tuple[Any, GammaByPhase]]], BaseModel]
SUBMIT_REFUSALS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
    429: {"model": ErrorOut},
    503: {"model": ErrorOut},
}


def fold_router(
    kind: JobKind,
    *,
    tag: str,
    body: type[BaseModel],
    out: type[BaseModel],
    shape: Shape,
    names: tuple[str, str],
    docs: tuple[str, str],
) -> APIRouter:
    """``POST <path>`` (queue the job: one task per fold) and ``GET <path>/{job_id}`` (the job and its folds,
    shaped by ``shape``); ``names`` and ``docs`` are the two endpoints' names and descriptions."""
    router = APIRouter(prefix=kind.path, tags=[tag])

    def create(
        body: body,  # type: ignore[valid-type]
        response: Response,
        session: SessionDep,
        settings: SettingsDep,
        celery: CeleryDep,
        queues: QueuesDep,
        owner: Submitter,
    ) -> JobOut:
        job = submit_folds(
            session,
            celery,
            queues.queue_for(kind.name),
            owner,
            kind.name,
            body.dataset_id,  # type: ignore[attr-defined]
            body.params(),  # type: ignore[attr-defined]
            memory_bytes=settings.worker_memory_bytes,
        )
        response.headers["Location"] = f"{kind.path}/{job.id}"
        return JobOut.model_validate(job)

    def read(session: Session, owner: str, job_id: str) -> BaseModel:
        job = owned_job(session, owner, job_id, kind=kind.name)
        return shape(job, fold_rows(session, job.id, kind.rows))

    async def get(job_id: str, reads: ReadsDep, owner: Owner) -> out:  # type: ignore[valid-type]
        return await reads(read, owner, job_id)

    for endpoint, name, doc in ((create, names[0], docs[0]), (get, names[1], docs[1])):
        endpoint.__name__ = endpoint.__qualname__ = name
        endpoint.__doc__ = doc
    router.post(
        "", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, responses=SUBMIT_REFUSALS
    )(create)
    router.get("/{job_id}", response_model=out, responses={404: {"model": ErrorOut}})(get)
    return router
