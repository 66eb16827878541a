"""The Celery application: ``celery -A worker.celery_app worker`` (or `bnrank worker`) runs it.

The API builds its own instance with `make_celery` only to *send* tasks by name, so it never imports the
task module. No result backend: results go to the database rows the API serves, which is also what makes
a task's outcome survive a broker restart.

Reliability settings (DESIGN §5): ``acks_late`` + ``task_reject_on_worker_lost`` put a task back on the
queue when the worker running it dies, and ``prefetch_multiplier=1`` keeps a busy worker from hoarding
tasks another worker could start. The tasks are idempotent, so a redelivery is harmless.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging

from service.config import Settings, get_settings


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
        "worker_concurrency": settings.worker_concurrency,
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


@setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging to us when this signal has a receiver: BNRANK_LOG_FORMAT applies to workers too."""
    from service.logs import configure_logging

    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else (loglevel or settings.log_level)
    configure_logging(str(level), settings.log_format)


app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)
