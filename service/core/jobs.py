"""Sending a job's tasks to the broker: used by the API when a job is created and by the recovery sweep.

Every unit of work (a ranking entry, an alchemy or probe fold) gets its own message, whose id is stamped on
the row before the send (`jobflow.stamp_dispatch`), so the recovery sweep can later ask the broker whether
that exact message still exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from celery import Celery

Message = tuple[str, str, list[Any]]  # (task id, task name, arguments)


def send_tasks(celery: Celery, queue: str, messages: Sequence[Message]) -> None:
    """Publish the messages over one broker connection; raises whatever kombu raises when it cannot.

    Where kombu can batch (5.7+: ``Producer.batch``, a Redis pipeline), the job's messages go to the
    broker in one round trip, and either all are flushed or, on an error, none; elsewhere one by one.
    """
    with celery.producer_or_acquire() as producer:
        batch = producer.batch() if hasattr(producer, "batch") else contextlib.nullcontext()
        with batch:
            for task_id, name, args in messages:
                celery.send_task(name, args=args, task_id=task_id, queue=queue, producer=producer)
