"""In-process caches of rankings' result bodies, and the counter that keeps several API processes' caches true.

Once a job has ended its results are final (the worker only writes rows that are still running), so the
serialised body can be served again without a query. The cache is per process and bounded; a restart or
another replica simply rebuilds it from the database. The owner is stored with the body and checked on
every hit, so the cache cannot leak one owner's results to another.

A change that makes a cached body wrong (a checkpoint deleted, a job cancelled) is made through one API
process, but several may serve the same clients (``api_processes``, or replicas on several hosts). With a
Redis broker, every discard also increments one counter in Redis (`Generation`), and every process reads it
(one round trip) before it serves a cached body: a process that sees a new value empties its caches first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

class Generation:
    """A counter in the broker's Redis, incremented by every discard in any API process."""

    def __init__(self, redis_url: str, key: str) -> None:
        import redis
        import redis.asyncio

        self.key = key
        self._sync = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._async = redis.asyncio.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.seen: bytes | None = None

    def bump(self) -> None:
        try:
            self._sync.incr(self.key)
        except Exception as exc:  # the other processes then serve what they cached, as before any sharing
            log.warning("cannot tell the other API processes to drop their cached rankings: %s", exc)

    async def changed(self) -> bool:
        """Whether some process discarded something since this process last looked (True when Redis cannot
        say: the caches are then not trusted, and bodies come from the database)."""
        try:
            value = await self._async.get(self.key)
        except Exception:
            self.seen = None
            return True
        if value == self.seen:
            return False
        self.seen = value
        return True

    async def close(self) -> None:
        self._sync.close()
        await self._async.aclose()


class FinishedCache:
    def __init__(self, max_items: int = 512, generation: Generation | None = None) -> None:
        self.max_items = max_items
        self.generation = generation
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, owner: str) -> bytes | None:
        with self._lock:
            item = self._items.get(job_id)
            if item is None or item[0] != owner:
                return None
            self._items.move_to_end(job_id)
            return item[1]

    def put(self, job_id: str, owner: str, body: bytes) -> None:
        with self._lock:
            self._items[job_id] = (owner, body)
            self._items.move_to_end(job_id)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def discard_all(self) -> None:
        """Forget everything (after a change that touches finished results, e.g. a checkpoint deleted)."""
        self.clear()
        if self.generation is not None:
            self.generation.bump()

    def clear(self) -> None:
        """Forget everything here (another process's discard)."""
        with self._lock:
            self._items.clear()


class LiveCache:
    """Unfinished rankings' bodies, each served for at most ``ttl_s`` after it was read.

    Many clients polling one running ranking would otherwise each cost a database round trip, which made
    a GET of a queued ranking 20 times dearer than one of a finished ranking (docs/benchmarks.md). A body at
    most ``ttl_s`` old is as good as a fresh one: a task writes its progress only every
    ``progress_interval_s`` (2 s by default). ``ttl_s`` 0 turns it off. Per process, bounded, checked
    against the owner on every hit like `FinishedCache`; a cancel through this process drops the entry.
    """

    def __init__(self, ttl_s: float, max_items: int = 512, generation: Generation | None = None) -> None:
        self.ttl_s = ttl_s
        self.generation = generation
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[str, float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        # Reads in flight, by owner and job (service/api/singleflight.py): when an entry expires under 64
        # polling clients, one of them reads the database and the others wait for its answer.
        self.loading: dict[str, Any] = {}

    def get(self, job_id: str, owner: str) -> bytes | None:
        """The body if it is at most ``ttl_s`` old."""
        found = self.lookup(job_id, owner)
        return found[0] if found is not None and not found[1] else None

    def lookup(self, job_id: str, owner: str) -> tuple[bytes, bool] | None:
        """``(body, stale)`` for a body at most 2 × ``ttl_s`` old; ``stale`` past ``ttl_s``.

        A stale body is served while one background read replaces it (stale-while-revalidate), so no
        polling client waits for the database when an entry expires: before, the clients that arrived
        during that read all waited for it, which was the tail of a queued ranking's GET latency
        (docs/benchmarks.md, issue 14). A body is thus never older than 2 × ``ttl_s`` (0.5 s by default,
        against a progress written every 2 s); one older than that is not served at all.
        """
        if self.ttl_s <= 0:
            return None
        with self._lock:
            item = self._items.get(job_id)
        if item is None or item[0] != owner:
            return None
        age = time.monotonic() - item[1]
        if age > 2 * self.ttl_s:
            return None
        return item[2], age > self.ttl_s

    def put(self, job_id: str, owner: str, body: bytes) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._items[job_id] = (owner, time.monotonic(), body)
            self._items.move_to_end(job_id)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._items.pop(job_id, None)
        if self.generation is not None:
            self.generation.bump()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


async def up_to_date(generation: Generation | None, finished: FinishedCache, live: LiveCache) -> None:
    """Empty this process's caches if another process discarded something since it last looked."""
    if generation is not None and await generation.changed():
        finished.clear()
        live.clear()


def shared_generation(broker_url: str, key_prefix: str, queue: str) -> Generation | None:
    """The cache counter of a deployment whose broker is Redis (None: one process, nothing to share)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    return Generation(broker_url, f"{key_prefix}{queue}:cache-generation")
