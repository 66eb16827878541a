"""An in-process cache of finished jobs' result bodies.

Once a job has ended its results are final (the worker only writes rows that are still running), so the
serialised body can be served again without a query. The cache is per process and bounded; a restart or
another replica simply rebuilds it from the database. The owner is stored with the body and checked on
every hit, so the cache cannot leak one owner's results to another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


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
