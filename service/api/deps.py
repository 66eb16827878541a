"""Request-scoped dependencies: the only place that reads ``app.state``.

Routes declare what they need (a session, the settings, the blob store, …) and get it injected, so a route
never reaches into the application object and one process can host several apps with different settings
side by side, as the tests do. The getters are ``async``: FastAPI would run a plain ``def`` dependency on
the thread pool, a hop each, for what is only an attribute read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from celery import Celery
from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.metrics import Metrics
from service.core.blobs import BlobStore
from service.core.broker import BrokerProbe
from service.core.cache import FinishedCache, LiveCache
from service.core.config import Settings
from service.core.datasets import CheckLimits as DatasetCheckLimits
from service.core.db import Database
from service.core.queues import QueueRouter
from service.core.s3datasets import RemoteDatasets

T = TypeVar("T")


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.sessions() as session:
        yield session


class Reads:
    """Run ``fn(session, *args)`` on the thread pool with a fresh read session: one thread hop per request.

    Hot read endpoints (job and result polling) are async and use this instead of a session dependency
    plus a sync body, which costs three hops (dependency enter, body, dependency exit).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            with self.db.reads() as session:
                return fn(session, *args)

        return await run_in_threadpool(call)


async def get_reads(request: Request) -> Reads:
    return Reads(request.app.state.db)


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_broker(request: Request) -> BrokerProbe:
    return request.app.state.broker


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_finished(request: Request) -> FinishedCache:
    return request.app.state.finished_rankings


async def get_live(request: Request) -> LiveCache:
    return request.app.state.live_rankings


async def get_remote_datasets(request: Request) -> RemoteDatasets | None:
    return request.app.state.remote_datasets


async def get_queues(request: Request) -> QueueRouter:
    return request.app.state.queues


async def get_validation_slots(request: Request) -> threading.BoundedSemaphore:
    return request.app.state.validation_slots


async def get_dataset_checks(request: Request) -> DatasetCheckLimits:
    return request.app.state.dataset_checks


async def get_worker(request: Request) -> Any:
    """The embedded worker's supervisor under `bnrank serve` (service/core/launcher.py), else None."""
    return getattr(request.app.state, "worker", None)


SessionDep = Annotated[Session, Depends(get_session)]
ReadsDep = Annotated[Reads, Depends(get_reads)]
DatabaseDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
BrokerDep = Annotated[BrokerProbe, Depends(get_broker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
FinishedDep = Annotated[FinishedCache, Depends(get_finished)]
LiveDep = Annotated[LiveCache, Depends(get_live)]
RemoteDatasetsDep = Annotated[RemoteDatasets | None, Depends(get_remote_datasets)]
QueuesDep = Annotated[QueueRouter, Depends(get_queues)]
SlotsDep = Annotated[threading.BoundedSemaphore, Depends(get_validation_slots)]
WorkerDep = Annotated[Any, Depends(get_worker)]
DatasetChecksDep = Annotated[DatasetCheckLimits, Depends(get_dataset_checks)]

Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
# A ceiling far above any real table, low enough that the database never sees an integer it cannot hold.
MAX_OFFSET = 10**9
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]
