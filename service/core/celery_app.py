"""How a Celery application for BNRank is configured; the API and the worker each build one with `make_celery`.

It lives in core, not in worker/, because the API needs one too: only to *send* tasks by name, so it never
imports the worker or its task module. The worker's own instance (with the tasks and the logging hook) is
``worker.celery_app``, what ``celery -A worker.celery_app worker`` (or `bnrank worker`) runs.

No result backend: results go to the database rows the API serves, which is also what makes a task's
outcome survive a broker restart.

Reliability settings (DESIGN §5): ``acks_late`` + ``task_reject_on_worker_lost`` put a task back on the
queue when the worker running it dies, and ``prefetch_multiplier=1`` keeps a busy worker from hoarding
tasks another worker could start. The tasks are idempotent, so a redelivery is harmless.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.core.config import Settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("bnrank", broker=settings.broker_url, set_as_current=False)
    conf: dict[str, Any] = {
        "broker_transport_options": settings.broker_transport_options(),
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency or None,  # 0: `worker_command` decides (its GPUs)
        "task_serializer": "json",
        "accept_content": ["json"],
        "enable_utc": True,
        # Fail fast when the broker is down: the API answers 503 instead of hanging a request.
        "broker_connection_timeout": 3.0,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    }
    if settings.embedded_broker:
        # The filesystem transport has no broadcast channel worth using; remote control would only poll.
        conf["worker_enable_remote_control"] = False
        conf["worker_send_task_events"] = False
    app.conf.update(conf)
    return app
