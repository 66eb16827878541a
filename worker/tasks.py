"""Celery tasks: one evaluates one ranking entry, the others run one alchemy or probe fold; each writes its row.

The Celery functions here are thin and generated, one per job kind; the work is the one unit-of-work loop
(worker/unit.py) over each kind's `Unit` (worker/ranking.py, worker/folds.py), plain functions taking a
`WorkerContext`, so tests can run a task body in-process against the same database to check what a
redelivery does.

A task never raises for a problem with its input (bad file, NaN loss, dataset changed): its row is marked
failed with the reason, and the rest of the job goes on. Cancel is cooperative: a reporter thread writes
progress every few seconds and reads the job's cancel flag; the engine's progress callback then raises
`Cancelled` at the next step it reports. Claiming, finishing and closing jobs follow service.core.jobflow;
a job's parameters are read back typed (service.core.params) and results are written through the one
mapping of service.core.results.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from service.core.broker import BrokerProbe
from service.core.config import get_settings
from service.core.db import Database
from service.core.kinds.ranking import RACE_TASK
from service.core.launcher import READY_FILE_ENV
from service.core.logs import job_context
from service.core.queues import Announcer, gpu_count, gpu_queue, worker_queues
from service.core.recovery import Sweeper
from worker import folds, ranking
from worker.celery_app import app
from worker.context import context
from worker.unit import Unit, run_unit

log = logging.getLogger(__name__)


_sweeper: Sweeper | None = None
_announcer: Announcer | None = None


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    """Start the recovery sweep in the worker's main process (and, on a worker that takes the GPU queue, its
    presence announcements), then tell a parent that started this worker (service.core.launcher) that it now
    consumes from the queue."""
    global _sweeper, _announcer
    settings = get_settings()
    db = Database(settings, pool_size=1)
    _sweeper = Sweeper(db, app, settings, BrokerProbe(settings, app).pending_task_ids).start()
    if gpu_queue(settings) in worker_queues(settings, gpu_count(settings)):
        _announcer = Announcer(settings, getattr(sender, "hostname", None) or f"worker-{os.getpid()}").start()
    ready_file = os.environ.get(READY_FILE_ENV)
    if ready_file:
        Path(ready_file).touch()


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    """Warm shutdown (SIGTERM): Celery finishes the tasks in flight; the sweep stops now."""
    if _sweeper is not None:
        _sweeper.stop()
    if _announcer is not None:
        _announcer.stop()


# The worker side of every job kind (service/core/kinds/): one registration line each.
UNITS: tuple[Unit, ...] = (ranking.UNIT, folds.ALCHEMY_UNIT, folds.PROBE_UNIT)


def _task(unit: Unit) -> Any:
    """The Celery task of a kind: one unit of work, by (job id, entry id or fold), under its log context."""

    def run(job_id: str, key: Any) -> str:
        with job_context(job_id, **{unit.log_key: str(key)}):
            return run_unit(context(), unit, job_id, key)

    run.__name__ = run.__qualname__ = unit.kind.task_label
    return app.task(name=unit.kind.task, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run)


TASKS = {unit.kind.name: _task(unit) for unit in UNITS}


@app.task(name=RACE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def race_entry(job_id: str, entry_id: str) -> str:
    """A cascade's race row (a fine-tuning run), routed to GPU workers first: the ranking's unit of work."""
    with job_context(job_id, entry_id=str(entry_id)):
        return run_unit(context(), ranking.UNIT, job_id, entry_id)
