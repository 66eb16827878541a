"""``/healthz`` (the process answers), ``/readyz`` (database and broker reachable), ``/metrics``.

``/metrics`` tells job counts and queue lengths to whoever asks, so a deployment can require a key for it
(``BNRANK_METRICS_KEY``) or move it to a port of its own (``BNRANK_METRICS_PORT``, see service/api/app.py),
where this route then answers 404.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import BrokerDep, DatabaseDep, MetricsDep, SettingsDep, WorkerDep
from service.api.schemas import ErrorOut, Health, Unready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: no I/O, so a slow database never gets a healthy process restarted."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Unready}})
def readyz(db: DatabaseDep, broker: BrokerDep, worker: WorkerDep) -> Response:
    """Readiness: can this process serve requests and queue jobs right now? Under `bnrank serve` with its
    embedded worker, also: is that worker running (``checks.worker``; 503 while it is being restarted)."""
    checks: dict[str, str] = {}
    try:
        db.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    try:
        broker.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    if worker is not None:
        checks["worker"] = worker.state
    if all(v == "ok" for v in checks.values()):
        return JSONResponse(Health(status="ok", checks=checks).model_dump())
    detail = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    return JSONResponse(Unready(detail=detail, status="unavailable", checks=checks).model_dump(), status_code=503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        401: {"model": ErrorOut, "description": "BNRANK_METRICS_KEY is set and was not sent"},
        404: {"model": ErrorOut, "description": "metrics are served on their own port (BNRANK_METRICS_PORT)"},
    },
)
def metrics(request: Request, collected: MetricsDep, settings: SettingsDep) -> Response:
    """Prometheus text format."""
    if settings.metrics_port:
        raise HTTPException(404, detail="metrics are served on their own port")
    if settings.metrics_key:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            key.strip().encode(), settings.metrics_key.encode()
        ):
            raise HTTPException(
                401, detail="metrics need 'Authorization: Bearer <metrics key>'", headers={"WWW-Authenticate": "Bearer"}
            )
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
