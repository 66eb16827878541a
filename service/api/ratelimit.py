"""Rate limits: failed authentication per client address and per presented key, job submission per owner.

Token buckets: each key holds up to ``per_minute`` tokens and regains them at ``per_minute`` a minute, so a
burst up to the limit passes and a steady abuser is held to the rate. A refusal says when the next token is
due (``Retry-After``).

Where the counters live (``BNRANK_RATE_LIMIT_STORE``):

- ``process`` (`RateLimiter`): in the API process. Behind several replicas the effective limit is that
  times the replica count. The embedded default has one process and no Redis, so this is its store.
- ``redis`` (`RedisRateLimiter`): in the broker's Redis, one hash per bucket updated by a Lua script (read,
  refill, take, expire in one atomic round trip, timed by Redis's own clock so API hosts need not agree on
  theirs), so every API process spends from the same bucket and the limit is global. Only the requests
  that are limited pay the round trip: a failed authentication, a key not in the key cache, a submission.
  If Redis does not answer, the process's own buckets take over for a few seconds (a limit per process
  rather than none, and no request waits on a dead Redis), then Redis is tried again.
- ``auto`` (default): ``redis`` when the broker is Redis, else ``process``.

Memory is bounded in both: in-process, past ``max_keys`` buckets, those that have refilled completely (they
carry no information) are dropped, and if that is not enough, all are; in Redis, a bucket expires when it
would be full again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from service.core.config import Settings

MAX_KEYS = 100_000
log = logging.getLogger(__name__)


class RateLimiter:
    """Token buckets in this process."""

    def __init__(self, per_minute: int, *, max_keys: int = MAX_KEYS, clock: object = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def retry_after(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or None when it may now (nothing is spent)."""
        if not self.enabled:
            return None
        with self._lock:
            tokens = self._tokens(key, self._clock())  # type: ignore[operator]
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def spend(self, key: str) -> float | None:
        """Take a token for ``key``; None when there was one, else the seconds until there is."""
        if not self.enabled:
            return None
        with self._lock:
            now = self._clock()  # type: ignore[operator]
            tokens = self._tokens(key, now)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / self.rate
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._prune(now)
            self._buckets[key] = (tokens - 1, now)
            return None

    async def check(self, key: str) -> float | None:
        """`retry_after`, awaitable like the shared limiter's."""
        return self.retry_after(key)

    async def take(self, key: str) -> float | None:
        """`spend`, awaitable like the shared limiter's."""
        return self.spend(key)

    async def close(self) -> None:
        """Nothing to release (the shared limiter closes its Redis connections)."""

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.capacity]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


# KEYS[1]: the bucket; ARGV: capacity, tokens per second, tokens to take (0: only look). Returns nil when
# the bucket had a token (and took it), else the seconds until it will, as a string (Lua numbers that go
# back to Redis are truncated to integers).
TOKEN_BUCKET = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = nil
if tokens < 1 then
  wait = tostring((1 - tokens) / rate)
elseif cost > 0 then
  tokens = tokens - cost
end
if cost > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
end
return wait
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every API process that uses the same Redis and ``name``."""

    def __init__(
        self, per_minute: int, url: str, name: str, *, prefix: str = "", fallback_s: float = 5.0, timeout_s: float = 0.5
    ) -> None:
        import redis.asyncio

        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.prefix = f"{prefix}ratelimit:{name}:"
        self.fallback_s = fallback_s
        self.local = RateLimiter(per_minute)  # while Redis does not answer
        self._redis: Any = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._script = self._redis.register_script(TOKEN_BUCKET)
        self._down_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    async def _bucket(self, key: str, cost: int) -> float | None:
        if not self.enabled:
            return None
        if time.monotonic() >= self._down_until:
            import redis

            try:
                wait = await self._script(keys=[self.prefix + key], args=[self.capacity, self.rate, cost])
                return None if wait is None else float(wait)
            except (redis.RedisError, OSError) as exc:
                self._down_until = time.monotonic() + self.fallback_s
                log.warning("rate limits: Redis did not answer (%s); this process counts alone for now", exc)
        return self.local.spend(key) if cost else self.local.retry_after(key)

    async def check(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or None when it may now (nothing is spent)."""
        return await self._bucket(key, 0)

    async def take(self, key: str) -> float | None:
        """Take a token for ``key``; None when there was one, else the seconds until there is."""
        return await self._bucket(key, 1)

    async def close(self) -> None:
        await self._redis.aclose()


Limiter = RateLimiter | RedisRateLimiter


def make_limiter(settings: Settings, name: str, per_minute: int) -> Limiter:
    """The limiter ``BNRANK_RATE_LIMIT_STORE`` asks for (``auto``: Redis when the broker is Redis)."""
    store = settings.rate_limit_store
    if store == "auto":
        store = "redis" if settings.broker_url.startswith(("redis://", "rediss://")) else "process"
    if store == "redis" and per_minute > 0:
        return RedisRateLimiter(per_minute, settings.broker_url, name, prefix=settings.broker_key_prefix)
    return RateLimiter(per_minute)


def retry_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1 (the header takes no fractions)."""
    return str(max(1, math.ceil(seconds)))
