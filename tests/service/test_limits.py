"""Abuse controls (issue 14, item 5): failed-authentication and submission rate limits, a private /metrics."""

from __future__ import annotations

from typing import Any

import httpx

from service.api.ratelimit import RateLimiter
from service.core.launcher import free_port
from tests.service.conftest import TINY_BUDGET, Stack, key_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # 6 a minute: one every 10 s
    assert [limiter.spend("k") for _ in range(6)] == [None] * 6
    wait = limiter.spend("k")
    assert wait is not None and 0 < wait <= 10
    assert limiter.spend("other") is None  # keys are independent
    clock.now += 10
    assert limiter.retry_after("k") is None and limiter.spend("k") is None
    assert limiter.spend("k") is not None


def test_token_bucket_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(1, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.spend(f"addr:{i}")
    assert len(limiter._buckets) <= 100


def test_disabled_limits_never_refuse() -> None:
    limiter = RateLimiter(0)
    assert all(limiter.spend("k") is None for _ in range(1000))


def test_failed_authentication_is_limited_per_address(stack: Stack, serve_app: Any) -> None:
    settings = stack.settings.model_copy(update={"auth_failures_per_minute": 3})
    with serve_app(settings) as url:
        bad = {"Authorization": "Bearer bnr_guess"}
        statuses = [httpx.get(f"{url}/v1/jobs", headers=bad).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        refused = httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer bnr_another_guess"})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many failed authentications" in refused.json()["detail"]
        assert httpx.get(f"{url}/v1/jobs").status_code == 429  # no key at all: the same address
        assert httpx.get(f"{url}/healthz").status_code == 200  # unauthenticated routes are unaffected


def test_job_submission_is_limited_per_owner(
    stack: Stack, serve_app: Any, alice: httpx.Client, bob: httpx.Client
) -> None:
    settings = stack.settings.model_copy(update={"submissions_per_minute": 2})
    body = {"dataset_id": "ds_nope", "checkpoint_ids": ["ck_nope"], "budget": TINY_BUDGET}
    with serve_app(settings) as url:
        as_alice = {"Authorization": f"Bearer {key_of(alice)}"}
        statuses = [httpx.post(f"{url}/v1/rankings", json=body, headers=as_alice).status_code for _ in range(3)]
        assert statuses == [404, 404, 429]
        refused = httpx.post(f"{url}/v1/rankings", json=body, headers=as_alice)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/v1/jobs", headers=as_alice).status_code == 200  # reading is not submitting
        as_bob = {"Authorization": f"Bearer {key_of(bob)}"}
        assert httpx.post(f"{url}/v1/rankings", json=body, headers=as_bob).status_code == 404


def test_metrics_can_require_a_key(stack: Stack, serve_app: Any) -> None:
    settings = stack.settings.model_copy(update={"metrics_key": "scrape-me"})
    with serve_app(settings) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200 and "bnrank_http_requests" in scraped.text


def test_metrics_can_move_to_a_port_of_their_own(stack: Stack, serve_app: Any) -> None:
    port = free_port()
    settings = stack.settings.model_copy(update={"metrics_port": port})
    with serve_app(settings) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200 and "bnrank_http_requests" in scraped.text
