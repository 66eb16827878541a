"""The recovery sweep: work whose broker message was lost, or whose worker died, is sent again.

Two ways work can be stranded, and how each is recognised:

- **A dead worker** (killed, out of memory, host lost, or cut off from the database long enough): its row
  stays ``running`` but the heartbeat the worker renews every ``progress_interval_s`` stops. Once the
  heartbeat is older than ``lease_s`` the row goes back to ``queued`` with a fresh message. Celery's own
  redelivery (``acks_late``) may also bring the old message back; the claim refuses a row whose lease is
  live, so at most one of the two runs it.
- **A lost message** (Redis restarted without persistence, a queue purged by hand, the filesystem broker's
  folder wiped): the row stays ``queued`` and the broker no longer holds its task id. After
  ``requeue_after_s`` since its dispatch, it is sent again.

Every change is a conditional update on the value just read, so several workers can sweep at once and only
one of them re-sends a given row. A re-send that turns out to be unnecessary costs a message, nothing more:
the tasks are idempotent. Jobs whose rows all finished but which were never closed (the process died
between the two) are closed here as well.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session

from service.core.config import Settings
from service.core.db import Database
from service.core.jobflow import ACTIVE_JOB, finalise
from service.core.jobs import Message, task_message
from service.core.kinds import work_tables
from service.core.models import TERMINAL_ENTRY_STATUSES, Job, utcnow
from service.core.queues import QueueRouter

log = logging.getLogger(__name__)

PendingIds = Callable[[], "set[str] | None"]


@dataclass
class SweepReport:
    orphaned: list[str] = field(default_factory=list)  # running rows whose worker stopped beating
    lost: list[str] = field(default_factory=list)  # queued rows whose message the broker no longer holds
    closed: list[str] = field(default_factory=list)  # jobs closed because all their rows had finished

    def __bool__(self) -> bool:
        return bool(self.orphaned or self.lost or self.closed)


def _requeue(session: Session, job: Job, row: Any, expect: dict) -> Message | None:
    """Give ``row`` a new task id if it still looks as it did when read; the message to send, if it won.

    The ORM objects are not touched before the conditional update: autoflush would otherwise write the new
    id first and the condition on the old one could never hold.
    """
    rows = type(row)
    name, args = task_message(job, row)
    task_id = str(uuid.uuid4())
    old = rows.task_id.is_(None) if row.task_id is None else rows.task_id == row.task_id
    conditions = [rows.id == row.id, old, *(getattr(rows, column) == value for column, value in expect.items())]
    won = session.execute(
        update(rows)
        .where(*conditions)
        .values(status="queued", task_id=task_id, dispatched_at=utcnow())  # progress kept: it never goes back
        .execution_options(synchronize_session=False)
    ).rowcount
    if won != 1:
        return None
    job.task_ids = [*(job.task_ids or []), task_id]
    job.updated_at = utcnow()
    return task_id, name, args


def sweep(db: Database, celery: Celery, settings: Settings, pending_ids: PendingIds) -> SweepReport:
    """One pass over the active jobs; re-sends what is stranded. Safe to run from any number of processes."""
    report = SweepReport()
    now = utcnow()
    stale = now - timedelta(seconds=settings.lease_s)
    due = now - timedelta(seconds=settings.requeue_after_s)
    pending: set[str] | None = None
    pending_read = False
    messages: list[Message] = []
    with db.session() as s:
        for rows in work_tables():
            active = select(rows, Job).join(Job, Job.id == rows.job_id).where(Job.status.in_(ACTIVE_JOB))
            orphans = s.execute(
                active.where(
                    rows.status == "running",
                    or_(rows.heartbeat_at < stale, rows.heartbeat_at.is_(None) & (rows.started_at < stale)),
                )
            ).all()
            for row, job in orphans:
                message = _requeue(s, job, row, {"status": "running", "heartbeat_at": row.heartbeat_at})
                if message:
                    messages.append(message)
                    report.orphaned.append(row.id)
            waiting = s.execute(
                active.where(rows.status == "queued", or_(rows.dispatched_at < due, rows.dispatched_at.is_(None)))
            ).all()
            if waiting and not pending_read:
                pending, pending_read = pending_ids(), True
            for row, job in waiting:
                if pending is None or (row.task_id and row.task_id in pending):
                    continue
                message = _requeue(s, job, row, {"status": "queued"})
                if message:
                    messages.append(message)
                    report.lost.append(row.id)
        # Jobs with nothing left to run that nobody closed: one query per table, not one per job.
        for rows in work_tables():
            of_job = rows.job_id == Job.id
            unclosed = select(Job.id).where(
                Job.status.in_(ACTIVE_JOB),
                exists().where(of_job),
                ~exists().where(of_job, rows.status.not_in(TERMINAL_ENTRY_STATUSES)),
            )
            # (a halving ranking between rounds is not closed: its next round's messages join the ones sent below)
            report.closed += [job_id for job_id in s.scalars(unclosed).all() if finalise(s, job_id, messages)]
    # Committed before sending: a task that starts at once must find its row with this task id.
    if messages:
        router = QueueRouter(settings)
        try:
            router.send(celery, messages)
        finally:
            router.close()
    if report:
        log.warning(
            "recovery: re-sent %d orphaned and %d lost task(s), closed %d job(s)",
            len(report.orphaned),
            len(report.lost),
            len(report.closed),
            extra={"rows": report.orphaned + report.lost, "jobs": report.closed},
        )
    return report


class Sweeper:
    """Runs `sweep` every ``recover_interval_s`` on a daemon thread (one per worker process group)."""

    def __init__(self, db: Database, celery: Celery, settings: Settings, pending_ids: PendingIds) -> None:
        self.args = (db, celery, settings, pending_ids)
        self.interval = settings.recover_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bnrank-recovery", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep(*self.args)
            except Exception as exc:  # database or broker down: try again next round
                log.warning("recovery sweep failed, retrying in %.0f s: %s", self.interval, exc)
