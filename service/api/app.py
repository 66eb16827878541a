"""The FastAPI application factory: ``uvicorn --factory service.api.app:create_app`` or `bnrank serve`.

Everything a request needs (settings, database, blob store, Celery producer, metrics) hangs off
``app.state`` and reaches routes through service/api/deps.py; nothing is a module global, so tests can run
several differently configured apps at once. The Celery instance here only sends tasks by name
(service.core.celery_app): the API never imports the worker.

Every error, whoever raises it (a route, validation, routing, the body limit, the rate limits), leaves as
``{"detail": "..."}`` with the status the OpenAPI document promises (service/api/contract.py). Nothing a
client sends may make a 5xx: a value the database cannot store (a NUL byte in a string) is a 422.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from bnrank import __version__
from service.api.auth import KeyCache
from service.api.authgate import AuthFirstMiddleware
from service.api.background import housekeeping
from service.api.bodylimit import BodyLimitMiddleware
from service.api.contract import contract
from service.api.heap import freeze_startup_objects
from service.api.metrics import Metrics, MetricsMiddleware, StateCollector
from service.api.ratelimit import make_limiter, retry_header
from service.api.receive import set_receive_buffer
from service.api.refusals import status_of
from service.api.routes import (
    alchemy,
    artifacts,
    checkpoints,
    datasets,
    health,
    jobs,
    leaderboard,
    probes,
    rankings,
)
from service.core.broker import BrokerProbe
from service.core.cache import FinishedCache, LiveCache, shared_generation
from service.core.celery_app import make_celery
from service.core.config import Settings, get_settings
from service.core.datasets import CheckLimits
from service.core.db import Database
from service.core.errors import Limited, ServiceError
from service.core.objectstore import open_blob_store
from service.core.queues import QueueRouter
from service.core.s3datasets import remote_datasets
from service.ui.routes import mount as mount_dashboard

log = logging.getLogger(__name__)

def _where(loc: tuple | list) -> str:
    """``("body", "budget", "max_steps")`` → ``body.budget.max_steps``."""
    return ".".join(str(part) for part in loc)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable sentence per problem, each naming the field, instead of FastAPI's nested list.

    At most 20 problems are named: a list of a million bad items must not make a million-line answer.
    """
    errors = exc.errors()
    problems = [f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:20]]
    if len(errors) > 20:
        problems.append(f"and {len(errors) - 20} more")
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)


async def _refused(_: Request, exc: ServiceError) -> JSONResponse:
    status = status_of(exc)
    headers = {"Retry-After": retry_header(exc.retry_after)} if isinstance(exc, Limited) else None
    return JSONResponse({"detail": exc.detail}, status_code=status, headers=headers)


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The routes themselves, through the wrappers newer FastAPI puts around included routers (ours are
    included without a prefix: each carries its full path)."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            yield from _leaf_routes(inner)
        else:
            yield route


def _allowed_methods(request: Request) -> str:
    """Every method some route answers on this path: FastAPI keeps one route per method, and Starlette's
    405 names only the first route that matched the path."""
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers or None)


async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
    """The database refused a value of the request (a NUL byte, a number out of its range): bad input."""
    log.info("refused a value on %s %s: %s", request.method, request.url.path, str(exc.orig)[:200])
    return JSONResponse({"detail": "a value in the request cannot be stored (e.g. a NUL character)"}, 422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the service log"}, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_folders()
    set_receive_buffer(settings.receive_buffer_bytes)
    db = Database(settings)
    celery = make_celery(settings)
    broker = BrokerProbe(settings, celery)
    metrics = Metrics()
    metrics.add_state(StateCollector(db, broker.queue_length))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()  # the app and every module are built: keep them out of full GC passes
        async with housekeeping(app.state):
            yield
        await app.state.auth_limiter.close()
        await app.state.submission_limiter.close()
        broker.close()
        app.state.queues.close()
        if generation is not None:
            await generation.close()
        db.dispose()

    app = FastAPI(
        title="BNRank",
        version=__version__,
        summary="Rank pretrained 3D segmentation checkpoints for your dataset by BN-only evaluation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.blobs = open_blob_store(settings)
    app.state.remote_datasets = remote_datasets(settings)
    app.state.queues = QueueRouter(settings)
    app.state.celery = celery
    app.state.broker = broker
    app.state.metrics = metrics
    app.state.key_cache = KeyCache()
    generation = shared_generation(settings.broker_url, settings.broker_key_prefix, settings.queue)
    app.state.finished_rankings = FinishedCache(generation=generation)
    app.state.live_rankings = LiveCache(settings.live_cache_s, generation=generation)
    app.state.validation_slots = threading.BoundedSemaphore(settings.upload_validations)
    app.state.dataset_checks = CheckLimits(
        max_volume_bytes=settings.max_volume_bytes,
        time_limit_s=settings.dataset_check_time_limit_s,
        wait_s=settings.dataset_check_wait_s,
        slots=threading.BoundedSemaphore(settings.dataset_checks),
    )
    app.state.auth_limiter = make_limiter(settings, "auth", settings.auth_failures_per_minute)
    app.state.submission_limiter = make_limiter(settings, "submit", settings.submissions_per_minute)

    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(DataError, _unstorable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    # Outermost last: the client address first (trusted proxies only), then metrics, then the key from the
    # headers, then the body's ceiling; only then may anything read the body.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_json_body_bytes)
    app.add_middleware(AuthFirstMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)

    app.include_router(health.router)
    for module in (checkpoints, datasets, rankings, alchemy, probes, jobs, artifacts, leaderboard):
        app.include_router(module.router)  # each router carries its full /v1/... prefix (metrics labels)
    mount_dashboard(app)  # /ui: HTML pages over the same core functions, left out of the OpenAPI document
    app.openapi = lambda: contract(app)  # type: ignore[method-assign]
    return app
