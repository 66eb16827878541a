"""What a job kind declares, and the one conditional update that ends a job of any kind.

A kind (ranking, alchemy, probe) is one `JobKind`: its request model (generated from its engine config in
service/core/params.py), the table holding its units of work, the Celery task that runs one unit, how the job
closes when the last unit finishes, and the names the API, the dashboard and the metrics show it under. Generic
code (submission, cancel, recovery, progress, metrics, routes, pages) reads these fields instead of branching on
the kind's name; the registry is `service.core.kinds.KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.core.models import Job, utcnow
from service.core.params import JobParams

ACTIVE_JOB = ("queued", "running")
Message = tuple[str, str, list[Any]]  # (task id, task name, arguments)
Finalise = Callable[[Session, Job, "list[Message] | None"], bool]


@dataclass(frozen=True)
class JobKind:
    """One kind of job, declared once (see the module docstring)."""

    name: str
    """``jobs.kind``: the name stored, filtered on (``GET /v1/jobs?kind=``) and shown."""
    path: str
    """The API's collection of this kind (``/v1/rankings``): where a job is created and its results read."""
    page: str
    """The dashboard's page of one job of this kind (``/ui/<page>/<id>``)."""
    task: str
    """The Celery task that runs one unit of work, sent by name (the API never imports the worker)."""
    task_label: str
    """The ``task`` label of ``bnrank_task_duration_seconds``."""
    params: type[JobParams]
    """The typed ``jobs.params`` of the kind: its request, generated from the engine's option declarations."""
    rows: type[Any]
    """The table of its units of work (one row per candidate, or per fold): the lease columns of every unit."""
    relation: str
    """The ``Job`` relationship holding those rows."""
    unit: str
    """The row column a task is sent (``id`` of an entry, or ``fold``) and shown by (with `unit_label`)."""
    unit_label: str
    """The row column a progress event names a unit by (``name``, or ``fold`` shown as ``fold <n>``)."""
    unit_order: str
    """The row column units are listed in."""
    finalise: Finalise
    """Close the job when its last unit has finished (or start the next round); False while work remains."""

    def read(self, stored: Mapping[str, Any] | None) -> JobParams:
        """A job row's ``params`` as this kind's model: the one reader of stored params (raises pydantic's
        ValidationError, a ValueError, when they cannot be read: a row written by hand or by an older version).
        The worker then fails the work with the reason; the ranking's close-out and views fall back to the
        model's defaults, the same defaults a request gets."""
        return self.params.model_validate(dict(stored or {}))

    def message(self, job: Job, row: Any) -> tuple[str, list[Any]]:
        """The task that runs one unit of work, and its arguments: (job id, row id) or (job id, fold)."""
        return self.task, [job.id, getattr(row, self.unit)]

    def label(self, value: Any) -> str:
        return f"fold {value}" if self.unit_label == "fold" else str(value)

    def units(self, job: Job) -> list[Any]:
        return list(getattr(job, self.relation))


def close_job(session: Session, job: Job, status: str, error: str | None, result: dict[str, Any]) -> bool:
    """The one conditional update that ends a job; only one caller can win it."""
    now = utcnow()
    closed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_(ACTIVE_JOB))
        .values(
            status=status,
            error=error,
            result=result,
            progress=1.0,
            message=f"{job.kind} {status}",
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    return closed == 1
