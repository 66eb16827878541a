"""The FastAPI application factory: ``uvicorn --factory service.api.app:create_app`` or `bnrank serve`.

Everything a request needs (settings, database, blob store, Celery producer, metrics) hangs off
``app.state`` and reaches routes through service/api/deps.py; nothing is a module global, so tests can run
several differently configured apps at once. The Celery instance here only sends tasks by name
(service.core.celery_app): the API never imports the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bnrank import __version__
from service.api.auth import KeyCache
from service.api.metrics import Metrics, MetricsMiddleware, StateCollector
from service.api.routes import alchemy, artifacts, checkpoints, datasets, health, jobs, probes, rankings
from service.core.blobs import BlobStore
from service.core.broker import BrokerProbe
from service.core.cache import FinishedCache
from service.core.celery_app import make_celery
from service.core.config import Settings, get_settings
from service.core.db import Database
from service.core.errors import Conflict, Invalid, NotFound, ServiceError, Unavailable

log = logging.getLogger(__name__)

# How core's refusals (service/core/errors.py) are answered; any other ServiceError is a 400.
STATUS_OF = {NotFound: 404, Conflict: 409, Invalid: 422, Unavailable: 503}


def _where(loc: tuple | list) -> str:
    """``("body", "budget", "max_steps")`` → ``body.budget.max_steps``."""
    return ".".join(str(part) for part in loc)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable sentence per problem, each naming the field, instead of FastAPI's nested list.

    The structured list stays available under ``errors`` for programs.
    """
    problems = [f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
    return JSONResponse({"detail": "; ".join(problems) or "invalid request", "errors": errors}, status_code=422)


async def _refused(_: Request, exc: ServiceError) -> JSONResponse:
    status = next((code for kind, code in STATUS_OF.items() if isinstance(exc, kind)), 400)
    return JSONResponse({"detail": exc.detail}, status_code=status)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the service log"}, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_folders()
    db = Database(settings)
    celery = make_celery(settings)
    broker = BrokerProbe(settings, celery)
    metrics = Metrics()
    metrics.add_state(StateCollector(db, broker.queue_length))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        broker.close()
        db.dispose()

    app = FastAPI(
        title="BNRank",
        version=__version__,
        summary="Rank pretrained 3D segmentation checkpoints for your dataset by BN-only evaluation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.blobs = BlobStore(settings.blobs)
    app.state.celery = celery
    app.state.broker = broker
    app.state.metrics = metrics
    app.state.key_cache = KeyCache()
    app.state.finished_rankings = FinishedCache()
    app.state.validation_slots = threading.BoundedSemaphore(settings.upload_validations)

    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    app.include_router(health.router)
    for module in (checkpoints, datasets, rankings, alchemy, probes, jobs, artifacts):
        app.include_router(module.router)  # each router carries its full /v1/... prefix (metrics labels)
    return app
