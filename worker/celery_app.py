"""The worker's Celery application: ``celery -A worker.celery_app worker`` (or `bnrank worker`) runs it.

Configured by `service.core.celery_app.make_celery`, like the API's sending-only instance; what only a
worker needs is added here: its task module and the logging hook.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import setup_logging

from service.core.celery_app import make_celery
from service.core.config import get_settings
from service.core.launcher import follow_parent
from service.core.logs import configure_logging


@setup_logging.connect
def _logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging to us when this signal has a receiver: BNRANK_LOG_FORMAT applies to workers too."""
    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else (loglevel or settings.log_level)
    configure_logging(str(level), settings.log_format)


follow_parent()  # started by `bnrank serve` (or a test): end with it
app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)
