"""Logging for the API and the worker: readable text on a terminal, one JSON object per line in a stack.

Every record emitted while a task works on a job carries that job's id (and the entry or fold), whichever
module logged it, the engine included: `job_context` sets a context variable and a filter copies it onto
each record. So ``jq 'select(.job_id == "job_…")'`` over all workers' logs follows one job.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_tag)s: %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message")

_job: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("bnrank_job", default=None)


@contextmanager
def job_context(job_id: str, **ids: str) -> Iterator[None]:
    """Tag every log record in this block (this thread or task) with the job's id and the given ids."""
    token = _job.set({"job_id": job_id, **ids})
    try:
        yield
    finally:
        _job.reset(token)


class JobFilter(logging.Filter):
    """Copies the current job's ids onto the record; ``job_tag`` is their short text form."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _job.get()
        if ids:
            for key, value in ids.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        job_id = getattr(record, "job_id", None)
        record.job_tag = f" [{job_id}]" if job_id else ""
        return True


def make_handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                list(JSON_FIELDS),
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                reserved_attrs=[*RESERVED_ATTRS, "job_tag"],
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Replace the root logger's handlers with one that writes ``fmt`` to stderr.

    uvicorn's and Celery's loggers propagate to the root, so they come out in the same format.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
