"""The job state machine, shared by the API (cancel) and the worker (claim, finish, finalise).

A ranking is a job row plus one entry row per candidate (and per random-init control); an alchemy job is a
job row plus one result row per fold. One Celery task runs each row. Nothing waits for the group as a
whole: whichever task finishes the *last* row closes the job (for a ranking: orders the entries). That
needs no result backend and no chord, and it survives redelivery:

- state changes are conditional updates (``... WHERE status IN (...)``), so two deliveries of one task,
  or a task and a cancel, cannot both win;
- rows are unique per (job, slot) or (job, fold) and results are written over them, never appended;
- every task commits its row before it looks at the others, so the last one to commit always sees all
  of them finished and finalises; the job's own conditional update makes finalising happen once.

How a job closes is its kind's (service/core/kinds/): a ranking orders its entries with the engine's
close-out or, under successive halving, sends the survivors of a round on to the next; a job of folds closes
when its last fold has.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.core.errors import Conflict
from service.core.kinds import kind_of
from service.core.kinds.base import ACTIVE_JOB, Message
from service.core.models import TERMINAL_JOB_STATUSES, Job, utcnow
from service.core.owned import owned_job

__all__ = ["ACTIVE_JOB", "cancel_job", "finalise", "job_progress", "job_snapshot", "list_jobs", "request_cancel"]


def work_rows(kind: str) -> type[Any]:
    """The table holding a job's units of work: one row per candidate, or one per fold."""
    return kind_of(kind).rows


def job_progress(session: Session, job_id: str, rows: type[Any]) -> float:
    value = session.scalar(select(func.avg(rows.progress)).where(rows.job_id == job_id))
    return float(value or 0.0)


def request_cancel(session: Session, job: Job) -> None:
    """Ask a job to stop: queued work is cancelled at once, running work at its next progress report."""
    rows = work_rows(job.kind)
    now = utcnow()
    job.cancel_requested = True
    job.updated_at = now
    session.execute(
        update(rows)
        .where(rows.job_id == job.id, rows.status == "queued")
        .values(status="cancelled", finished_at=now, progress=1.0)
    )
    session.flush()
    finalise(session, job.id)
    session.refresh(job)


def cancel_job(session: Session, owner: str, job_id: str) -> Job:
    """The owner's request to cancel a job; Conflict once it has ended."""
    job = owned_job(session, owner, job_id)
    if job.status in TERMINAL_JOB_STATUSES:
        raise Conflict(f"job {job_id!r} already ended: {job.status}")
    request_cancel(session, job)
    session.commit()
    return job


def list_jobs(
    session: Session, owner: str, limit: int, offset: int, status: str | None, kind: str | None
) -> tuple[list[Job], int]:
    """A page of the owner's jobs (newest first), optionally of one status or kind, and the total."""
    where = [Job.owner == owner]
    if status:
        where.append(Job.status == status)
    if kind:
        where.append(Job.kind == kind)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    )
    return list(rows), total


def job_snapshot(session: Session, owner: str, job_id: str) -> dict[str, Any] | None:
    """What a progress event carries: the job's state and each unit of work's (candidates, or folds);
    None when the owner has no such job."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).first()
    if job is None:
        return None
    kind = kind_of(job.kind)
    rows = kind.rows
    work = select(getattr(rows, kind.unit_label), rows.status, rows.progress).where(rows.job_id == job_id)
    order = getattr(rows, kind.unit_order)
    units = session.execute(work.order_by(order)).all()
    return {
        "id": job.id,
        "status": job.status,
        "progress": round(job.progress, 4),
        "message": job.message,
        "error": job.error,
        "entries": [
            {"name": kind.label(name), "status": s, "progress": round(p, 4)} for name, s, p in units
        ],
    }


def finalise(session: Session, job_id: str, outbox: list[Message] | None = None) -> bool:
    """Close the job if all its work is finished and nobody closed it yet (see the module docstring).

    A ranking with halving rounds left dispatches its next round instead; its messages are appended to
    ``outbox`` for the caller to send once its transaction has committed.
    """
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL_JOB_STATUSES:
        return False
    return kind_of(job.kind).finalise(session, job, outbox)


