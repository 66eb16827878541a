"""GPU and CPU queues: which queue a job's tasks go to, which queues a worker takes, how many at once.

Two queues per deployment: ``<queue>`` (CPU work, and what every worker has always consumed) and
``<queue>.gpu``. A worker with GPUs consumes both, the GPU queue first; one without consumes the CPU queue
only. A job of a kind in ``gpu_kinds`` is sent to the GPU queue when some GPU worker announced itself
recently, else to the CPU queue if its kind is in ``cpu_fallback_kinds`` (where it may be slow, but runs),
else to the GPU queue anyway, where it waits for a GPU worker.

GPU workers announce themselves through the broker (`Presence`): a Redis sorted set of names by expiry, or
files in the filesystem broker's folder, renewed every ``recover_interval_s`` and valid for three times
that, so a worker that died stops counting within a minute or so. The API reads it once per
``PRESENCE_CACHE_S`` at most, so a submission costs no extra round trip in the common case.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from service.core.config import Settings

log = logging.getLogger(__name__)

GPU_SUFFIX = ".gpu"
PRESENCE_CACHE_S = 2.0


def cpu_queue(settings: Settings) -> str:
    return settings.queue


def gpu_queue(settings: Settings) -> str:
    return settings.queue + GPU_SUFFIX


def all_queues(settings: Settings) -> list[str]:
    """Every queue of this deployment, GPU first (the order a GPU worker consumes them in)."""
    return [gpu_queue(settings), cpu_queue(settings)]


def gpu_count(settings: Settings) -> int:
    """GPUs this worker may use: none when the device is ``cpu``; else what torch sees (1 for ``cuda:N``)."""
    if settings.device == "cpu":
        return 0
    import torch  # device_count does not create a CUDA context: safe before Celery forks its pool

    count = torch.cuda.device_count()
    if settings.device.startswith("cuda:"):
        return min(count, 1)
    return count


def worker_queues(settings: Settings, gpus: int) -> list[str]:
    """The queues a worker with ``gpus`` GPUs consumes (``worker_queues``: auto, gpu, cpu, all)."""
    choice = settings.worker_queues
    if choice == "auto":
        choice = "all" if gpus else "cpu"
    return {"gpu": [gpu_queue(settings)], "cpu": [cpu_queue(settings)], "all": all_queues(settings)}[choice]


def worker_concurrency(settings: Settings, gpus: int) -> int:
    """Tasks one worker runs at once: ``worker_concurrency`` when set, else one per GPU (one on a CPU)."""
    return settings.worker_concurrency or max(1, gpus)


def child_device(settings: Settings, gpus: int, index: int) -> str:
    """The device of a worker's pool child ``index``: the GPUs are dealt out in turn (``device`` auto/cuda)."""
    if settings.device not in ("auto", "cuda") or gpus == 0:
        return settings.device if settings.device != "auto" else "cpu"
    return f"cuda:{index % gpus}" if gpus > 1 else "cuda"


class Presence:
    """Which GPU workers announced themselves lately; kept by the broker, so every host sees the same."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ttl_s = 3 * settings.recover_interval_s
        self._redis: Any = None
        if settings.broker_url.startswith(("redis://", "rediss://")):
            import redis

            self._redis = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
        self._key = f"{settings.broker_key_prefix}{settings.queue}:gpu-workers"
        self._cached: tuple[float, bool] | None = None

    @property
    def _folder(self) -> Path:
        return self.settings.broker_folder / "gpu-workers"

    def announce(self, name: str) -> None:
        """This worker serves the GPU queue for another ``ttl_s``."""
        expires = time.time() + self.ttl_s
        if self._redis is not None:
            with self._redis.pipeline() as pipe:
                pipe.zadd(self._key, {name: expires})
                pipe.zremrangebyscore(self._key, "-inf", time.time())
                pipe.execute()
        elif self.settings.embedded_broker:
            self._folder.mkdir(parents=True, exist_ok=True)
            path = self._folder / name
            path.touch()
            os.utime(path, (expires, expires))

    def withdraw(self, name: str) -> None:
        if self._redis is not None:
            self._redis.zrem(self._key, name)
        elif self.settings.embedded_broker:
            (self._folder / name).unlink(missing_ok=True)

    def gpu_workers(self) -> bool:
        """Whether a GPU worker announced itself within ``ttl_s`` (read at most every ``PRESENCE_CACHE_S``)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < PRESENCE_CACHE_S:
            return self._cached[1]
        try:
            if self._redis is not None:
                seen = bool(self._redis.zcount(self._key, time.time(), "+inf"))
            elif self.settings.embedded_broker and self._folder.is_dir():
                seen = any(p.stat().st_mtime > time.time() for p in self._folder.iterdir())
            else:
                seen = False
        except Exception as exc:  # the broker is down: sending will fail and say so
            log.warning("cannot read GPU worker presence: %s", exc)
            seen = False
        self._cached = (now, seen)
        return seen

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


class QueueRouter:
    """The queue for a job kind's tasks (module docstring); ``for_task`` maps a Celery task name."""

    def __init__(self, settings: Settings, presence: Presence | None = None) -> None:
        from service.core.kinds import KINDS
        from service.core.kinds.ranking import RACE_TASK

        self.settings = settings
        self.presence = presence or Presence(settings)
        self._kind_of_task = {kind.task: name for name, kind in KINDS.items()}
        self._kind_of_task[RACE_TASK] = "ranking"  # a cascade's fine-tuning race rows: ranking work, GPU first

    def queue_for(self, kind: str) -> str:
        settings = self.settings
        if kind not in settings.gpu_kinds:
            return cpu_queue(settings)
        if kind in settings.cpu_fallback_kinds and not self.presence.gpu_workers():
            return cpu_queue(settings)
        return gpu_queue(settings)

    def for_task(self, task_name: str) -> str:
        return self.queue_for(self._kind_of_task.get(task_name, ""))

    def send(self, celery: Any, messages: list[Any]) -> None:
        """Send messages of any kinds, each to its queue (one batch per queue)."""
        from service.core.jobs import send_tasks

        by_queue: dict[str, list[Any]] = {}
        for message in messages:
            by_queue.setdefault(self.for_task(message[1]), []).append(message)
        for queue, batch in by_queue.items():
            send_tasks(celery, queue, batch)

    def close(self) -> None:
        self.presence.close()


class Announcer:
    """A GPU worker's thread that renews its presence every ``recover_interval_s`` until stopped."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.presence = Presence(settings)
        self.name = name
        self.interval_s = settings.recover_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-presence", daemon=True)

    def start(self) -> Announcer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.presence.announce(self.name)
            except Exception as exc:
                log.warning("cannot announce this GPU worker: %s", exc)
            if self._stop.wait(self.interval_s):
                break

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.presence.withdraw(self.name)
        except Exception as exc:
            log.warning("cannot withdraw this GPU worker's presence: %s", exc)
        self.presence.close()
