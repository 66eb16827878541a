"""Request-scoped dependencies: everything comes from ``app.state``, so one process can host several apps
(with different settings) side by side, as the tests do."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from celery import Celery
from fastapi import Depends, HTTPException, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.blobs import BlobStore
from service.config import Settings
from service.dispatch import send_tasks
from service.jobflow import stamp_dispatch, task_message, train_config
from service.models import AlchemyResult, Checkpoint, Dataset, GammaStat, Job, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.sessions() as session:
        yield session


async def in_session(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(session, *args)`` on the thread pool with a fresh session: one thread hop per request.

    Hot read endpoints (job and result polling) are async and use this instead of a session dependency
    plus a sync body, which costs three hops (dependency enter, body, dependency exit).
    """

    def call() -> T:
        with request.app.state.db.reads() as session:
            return fn(session, *args)

    return await run_in_threadpool(call)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


UNPROCESSABLE = 422  # Starlette renamed its constant for this status; the number is stable

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def not_found(what: str, ident: str) -> HTTPException:
    """The one answer for 'missing' and 'someone else's': existence is not disclosed across owners."""
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{what} {ident!r} not found")


Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, description="rows to skip")]


def owned_job(session: Session, owner: str, job_id: str, kind: str | None = None) -> Job:
    query = select(Job).where(Job.id == job_id, Job.owner == owner)
    if kind is not None:
        query = query.where(Job.kind == kind)
    job = session.scalars(query).first()
    if job is None:
        raise not_found(kind or "job", job_id)
    return job


def owned_dataset(session: Session, owner: str, dataset_id: str) -> Dataset:
    dataset = session.scalars(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner)).first()
    if dataset is None:
        raise not_found("dataset", dataset_id)
    return dataset


def owned_checkpoint(session: Session, owner: str, checkpoint_id: str) -> Checkpoint:
    ckpt = session.scalars(select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.owner == owner)).first()
    if ckpt is None:
        raise not_found("checkpoint", checkpoint_id)
    return ckpt


def check_budget(params: dict[str, Any]) -> None:
    """422 when a job's stored params do not make a valid engine config (the worker would fail later)."""
    try:
        train_config(params)
    except ValueError as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"budget: {exc}") from exc


def check_folds(folds: int, dataset: Dataset) -> None:
    if folds > dataset.n_cases:
        raise HTTPException(
            UNPROCESSABLE,
            detail=f"folds: {folds} folds need at least as many cases; the dataset has {dataset.n_cases}",
        )


def fold_results(session: Session, job_id: str) -> list[tuple[AlchemyResult, dict[str, dict[str, Any]]]]:
    """An alchemy or probe job's fold rows in fold order, each with its γ summaries by phase."""
    gamma: dict[int, dict[str, dict[str, Any]]] = {}
    for fold, phase, summary in session.execute(
        select(GammaStat.fold, GammaStat.phase, GammaStat.summary).where(GammaStat.job_id == job_id)
    ):
        gamma.setdefault(fold or 0, {})[phase] = summary
    rows = session.scalars(select(AlchemyResult).where(AlchemyResult.job_id == job_id).order_by(AlchemyResult.fold))
    return [(row, gamma.get(row.fold, {})) for row in rows]


def submit_job(session: Session, celery: Celery, settings: Settings, job: Job) -> None:
    """Commit the job with its rows and their task ids, then send one task per row.

    Ids are chosen before the commit so the rows are complete before any task can start. If the broker
    refuses, the job can never run: it is marked failed and the caller gets 503.
    """
    # Ids and task ids are set here, not by the column defaults at flush: the rows then go to the database
    # complete in one INSERT each (a flush first and the task ids after cost an UPDATE per row).
    rows = job.entries if job.kind == "ranking" else job.alchemy_results
    for obj in (job, *rows):
        obj.id = obj.id or type(obj).__table__.c.id.default.arg(None)
    messages = []
    for row in rows:
        name, args = task_message(job, row)
        messages.append((stamp_dispatch(job, row), name, args))
    session.add(job)
    session.commit()
    try:
        send_tasks(celery, settings.queue, messages)
    except Exception as exc:  # kombu raises a zoo of connection errors
        log.error("cannot enqueue job %s: %s", job.id, exc)
        session.rollback()
        job.status, job.error, job.finished_at = "failed", f"could not be queued: broker unreachable ({exc})", utcnow()
        session.commit()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the task broker is unreachable: {exc}"
        ) from exc
