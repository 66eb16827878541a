"""An in-process cache of finished jobs' result bodies.

Once a job has ended its results are final (the worker only writes rows that are still running), so the
serialised body can be served again without a query. The cache is per process and bounded; a restart or
another replica simply rebuilds it from the database. The owner is stored with the body and checked on
every hit, so the cache cannot leak one owner's results to another.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any


class FinishedCache:
    def __init__(self, max_items: int = 512) -> None:
        self.max_items = max_items
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

    def __init__(self, ttl_s: float, max_items: int = 512) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[str, float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        # Reads in flight, by owner and job (service/api/singleflight.py): when an entry expires under 64
        # polling clients, one of them reads the database and the others wait for its answer.
        self.loading: dict[str, Any] = {}

    def get(self, job_id: str, owner: str) -> bytes | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            item = self._items.get(job_id)
        if item is None or item[0] != owner or time.monotonic() - item[1] > self.ttl_s:
            return None
        return item[2]

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
