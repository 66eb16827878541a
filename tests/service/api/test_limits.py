"""Abuse controls (issue 14, item 5): failed-authentication and submission rate limits, a private /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.api.ratelimit import RateLimiter, RedisRateLimiter, make_limiter
from service.core.config import Settings
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
        assert httpx.get(f"{url}/v1/jobs").status_code == 401  # no key at all: a budget of its own
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


# ------------------------------------------------------------------ shared counters (Redis), several processes


def _shared(stack: Stack, **limits: int) -> Settings:
    """The stack's settings with limits counted in Redis under a prefix of this test's own."""
    if stack.kind != "postgres+redis":
        pytest.skip("shared rate limits need the Redis broker")
    prefix = f"{stack.settings.broker_key_prefix}{free_port()}:"
    return stack.settings.model_copy(update={"rate_limit_store": "redis", "broker_key_prefix": prefix, **limits})


def test_failed_authentication_limit_is_global_across_api_processes(stack: Stack, serve_app: Any) -> None:
    """Two APIs on one Redis: failures at either count against one budget (per process, the 5th would be 401)."""
    settings = _shared(stack, auth_failures_per_minute=4)
    bad = {"Authorization": "Bearer bnr_guess"}
    with serve_app(settings) as first, serve_app(settings) as second:
        statuses = [httpx.get(f"{url}/v1/jobs", headers=bad).status_code for url in (first, second, first, second)]
        assert statuses == [401, 401, 401, 401]
        refused = httpx.get(f"{first}/v1/jobs", headers={"Authorization": "Bearer bnr_other"})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many failed authentications" in refused.json()["detail"]


def test_submission_limit_is_global_across_api_processes(stack: Stack, serve_app: Any, alice: httpx.Client) -> None:
    settings = _shared(stack, submissions_per_minute=2)
    body = {"dataset_id": "ds_nope", "checkpoint_ids": ["ck_nope"], "budget": TINY_BUDGET}
    as_alice = {"Authorization": f"Bearer {key_of(alice)}"}
    with serve_app(settings) as first, serve_app(settings) as second:
        statuses = [httpx.post(f"{u}/v1/rankings", json=body, headers=as_alice).status_code for u in (first, second)]
        assert statuses == [404, 404]
        refused = httpx.post(f"{second}/v1/rankings", json=body, headers=as_alice)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


def test_redis_bucket_refills_at_the_rate(stack: Stack) -> None:
    settings = _shared(stack)
    limiter = RedisRateLimiter(60, settings.broker_url, "refill", prefix=settings.broker_key_prefix)  # 1 a second

    async def run() -> tuple[list[float | None], float | None, float | None]:
        try:
            spent = [await limiter.take("k") for _ in range(61)]
            looked = await limiter.check("k")
            await asyncio.sleep(1.05)  # a token back
            return spent, looked, await limiter.take("k")
        finally:
            await limiter.close()

    spent, looked, later = asyncio.run(run())
    assert spent[:60] == [None] * 60
    assert spent[60] is not None and 0.5 < spent[60] <= 1
    assert looked is not None
    assert later is None


def test_an_unreachable_redis_falls_back_to_the_process(stack: Stack) -> None:
    limiter = RedisRateLimiter(2, f"redis://127.0.0.1:{free_port()}/0", "down", timeout_s=0.2)

    async def run() -> list[float | None]:
        try:
            return [await limiter.take("k") for _ in range(3)]
        finally:
            await limiter.close()

    waits = asyncio.run(run())
    assert waits[:2] == [None, None] and waits[2] is not None


def test_the_store_follows_the_broker(tmp_path: Any) -> None:
    embedded = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])
    assert isinstance(make_limiter(embedded, "auth", 5), RateLimiter)
    redis_broker = embedded.model_copy(update={"broker_url": "redis://127.0.0.1:6379/0"})
    assert isinstance(make_limiter(redis_broker, "auth", 5), RedisRateLimiter)
    per_process = redis_broker.model_copy(update={"rate_limit_store": "process"})
    assert isinstance(make_limiter(per_process, "auth", 5), RateLimiter)
    with pytest.raises(ValidationError, match="rate_limit_store 'redis'"):
        Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path], rate_limit_store="redis")
