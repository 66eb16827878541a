"""Rate limits per process: failed authentication per client address and per presented key, and job
submission per owner.

Token buckets: each key holds up to ``per_minute`` tokens and regains them at ``per_minute`` a minute, so a
burst up to the limit passes and a steady abuser is held to the rate. A refusal says when the next token is
due (``Retry-After``). The state is per API process: behind several replicas the effective limit is that
times the replica count, which still turns 300 guesses in 2.5 s into a handful; a shared store would add a
round trip to every request for little more.

Memory is bounded: past ``max_keys`` buckets, those that have refilled completely (they carry no
information) are dropped, and if that is not enough, all are.
"""

from __future__ import annotations

import math
import threading
import time

MAX_KEYS = 100_000


class RateLimiter:
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

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.capacity]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


def retry_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1 (the header takes no fractions)."""
    return str(max(1, math.ceil(seconds)))
