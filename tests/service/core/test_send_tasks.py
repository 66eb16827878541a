"""The job's task messages, built from Celery's protocol functions rather than ``send_task``, are the messages
``send_task`` would have sent: same headers, properties and body (only kombu's random delivery tag differs)."""

from __future__ import annotations

import uuid
from typing import Any

from service.core.celery_app import make_celery
from service.core.jobs import send_tasks
from tests.service.conftest import Stack


def _received(celery: Any, queue: str, count: int) -> list[Any]:
    with celery.connection_for_read() as connection, connection.SimpleQueue(queue) as simple:
        messages = [simple.get(timeout=10) for _ in range(count)]
        for message in messages:
            message.ack()
        return messages


def test_send_tasks_sends_what_celerys_send_task_sends(stack: Stack) -> None:
    celery = make_celery(stack.settings)
    queue = f"{stack.settings.queue}_wire_{uuid.uuid4().hex[:8]}"
    task_id = str(uuid.uuid4())
    args = [str(uuid.uuid4()), str(uuid.uuid4())]
    with celery.producer_or_acquire() as producer:
        celery.send_task("bnrank.rank_entry", args=args, task_id=task_id, queue=queue, producer=producer)
    send_tasks(celery, queue, [(task_id, "bnrank.rank_entry", args)])
    theirs, ours = _received(celery, queue, 2)
    assert (
        ours.decode()
        == theirs.decode()
        == [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    assert ours.headers == theirs.headers and ours.headers["id"] == task_id and ours.headers["argsrepr"] == repr(args)
    differs = {"delivery_tag"}
    assert {k: v for k, v in ours.properties.items() if k not in differs} == {
        k: v for k, v in theirs.properties.items() if k not in differs
    }
    assert ours.properties["delivery_info"]["routing_key"] == queue
