"""Request-scoped dependencies: everything comes from ``app.state``, so one process can host several apps
(with different settings) side by side, as the tests do."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.config import Settings
from service.models import Dataset, Job


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.sessions() as session:
        yield session


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
