"""API keys (401 paths, revocation, storage as a hash) and the unauthenticated health endpoints."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
from sqlalchemy import select

from service.api.auth import create_key, hash_key, revoke_key
from service.core.models import ApiKey
from tests.service.conftest import Stack, new_key


def test_missing_malformed_and_wrong_keys_are_401(anonymous: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}, {"Authorization": "Bearer nope"}):
        response = anonymous.get("/v1/checkpoints", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "key" in response.json()["detail"]


def test_keys_are_stored_hashed_and_revocation_works(stack: Stack, api: str) -> None:
    with stack.db.session() as session:
        row, plain = create_key(session, "carol")
        key_id = row.id
    with stack.db.session() as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.id == key_id)).one()
        assert stored.key_hash == hash_key(plain) != plain
        assert len(stored.prefix) < len(plain) // 3  # enough to recognise a key, far too little to use it
        assert revoke_key(session, key_id)
    response = httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {plain}"})
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_a_valid_key_reaches_its_owner_data(stack: Stack, api: str) -> None:
    key = new_key(stack, "dave")
    response = httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json() == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_health_endpoints_need_no_key(anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    text = anonymous.get("/metrics").text
    assert "bnrank_http_requests_total" in text
    assert 'route="/readyz"' in text
    assert "bnrank_queue_length" in text


def test_readyz_reports_an_unreachable_broker(
    stack: Stack, serve_app: Callable[..., AbstractContextManager[str]]
) -> None:
    broken = stack.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with serve_app(broken) as url:
        response = httpx.get(f"{url}/readyz", timeout=30)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("unreachable")


def test_openapi_document_describes_the_api(anonymous: httpx.Client) -> None:
    spec = anonymous.get("/openapi.json").json()
    for path in (
        "/v1/checkpoints",
        "/v1/checkpoints/{checkpoint_id}/gamma",
        "/v1/datasets",
        "/v1/rankings",
        "/v1/rankings/{job_id}",
        "/v1/alchemy",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/cancel",
        "/v1/artifacts/{artifact_id}",
    ):
        assert path in spec["paths"], path
    upload = spec["paths"]["/v1/checkpoints"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"200", "201", "413", "422"} <= set(upload["responses"])
