"""Cheap broker checks for ``/readyz`` and ``/metrics``: is it reachable, how many tasks wait.

Going through Celery for this would open a producer connection per probe; for the two brokers BNRank ships
with, a direct look is a single round trip (Redis ``PING``/``LLEN``) or a directory listing (filesystem).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celery import Celery

from service.core.config import Settings
from service.core.queues import all_queues


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
        """Tasks waiting in the GPU and CPU queues (not yet taken by a worker), or None where that is not cheap."""
        queues = all_queues(self.settings)
        if self._redis is not None:
            with self._redis.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.llen(self.settings.broker_key_prefix + queue)
                return sum(int(n) for n in pipe.execute())
        if self.settings.embedded_broker:
            suffixes = tuple(f".{queue}.msg" for queue in queues)
            return sum(1 for name in os.listdir(self._queue_folder()) if name.endswith(suffixes))
        return None

    def pending_task_ids(self) -> set[str] | None:
        """Ids of every task the broker still holds: waiting, or delivered but not yet acknowledged.

        None where the broker cannot be asked (then nothing is re-sent as lost). Redis keeps waiting
        messages in the queue's list and delivered ones in the ``unacked`` hash until the worker acks
        (``acks_late``: after the task ran). The filesystem broker keeps a file per waiting message; a
        message a worker has taken is no longer visible, which makes a re-send possible but harmless
        (the tasks are idempotent and a row being worked on cannot be claimed twice).
        """
        if self._redis is not None:
            prefix = self.settings.broker_key_prefix
            # Unacked first: a message moves from the list to the hash, so reading in this order can only
            # see it twice, never miss it.
            raw = list(self._redis.hvals(prefix + "unacked"))
            for queue in all_queues(self.settings):
                raw += self._redis.lrange(prefix + queue, 0, -1)
            ids = set()
            for item in raw:
                try:
                    message = json.loads(item)
                    if isinstance(message, list):  # unacked: [message, exchange, routing key]
                        message = message[0]
                    ids.add(str(message["headers"]["id"]))
                except (ValueError, KeyError, TypeError, IndexError):
                    continue
            return ids
        if self.settings.embedded_broker:
            folder = self._queue_folder()
            suffixes = tuple(f".{queue}.msg" for queue in all_queues(self.settings))
            ids = set()
            for path in (p for p in folder.iterdir() if p.name.endswith(suffixes)):
                try:
                    ids.add(str(json.loads(path.read_bytes())["headers"]["id"]))
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # taken by a worker while we looked, or half-written
            return ids
        return None

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
