"""Cheap broker checks for ``/readyz`` and ``/metrics``: is it reachable, how many tasks wait.

Going through Celery for this would open a producer connection per probe; for the two brokers BNRank ships
with, a direct look is a single round trip (Redis ``PING``/``LLEN``) or a directory listing (filesystem).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery

from service.config import Settings


class BrokerProbe:
    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self._redis: Any = None
        if settings.broker_url.startswith(("redis://", "rediss://")):
            import redis

            self._redis = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)

    def _queue_folder(self) -> Path:
        return Path(self.settings.broker_transport_options()["data_folder_in"])

    def ping(self) -> None:
        """Raise when the broker cannot take a task right now."""
        if self._redis is not None:
            self._redis.ping()
        elif self.settings.embedded_broker:
            folder = self._queue_folder()
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise OSError(f"broker folder {folder} is missing or not writable")
        else:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)

    def queue_length(self) -> int | None:
        """Tasks waiting (not yet taken by a worker), or None where that is not cheap to know."""
        if self._redis is not None:
            return int(self._redis.llen(self.settings.broker_key_prefix + self.settings.queue))
        if self.settings.embedded_broker:
            suffix = f".{self.settings.queue}.msg"
            return sum(1 for name in os.listdir(self._queue_folder()) if name.endswith(suffix))
        return None

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
