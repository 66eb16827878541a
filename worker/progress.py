"""Progress and cooperative cancel: a side thread writes the latest progress and reads the cancel flag.

The engine's progress callback only swaps a tuple and checks a flag, so reporting costs a step nothing;
when the job is cancelled (or this run lost its lease) the callback raises `Cancelled` at the next step.

Progress never goes backwards, for a row or for its job: a redelivered task starts its training again from
step 0, and a client polling the job should see it wait, not lose ground. Both updates keep the larger of
the stored and the new value, inside the UPDATE itself, so two runs reporting at once cannot interleave a
read and a write.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import ColumnElement, case, select, update

from service.core.jobflow import job_progress
from service.core.models import TERMINAL_JOB_STATUSES, Job, utcnow
from worker.context import WorkerContext
from worker.work import Work, WorkRow

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised from the engine's progress callback when the job was cancelled. Not a BNRankError, so the
    engine does not turn it into a failed entry."""


def at_least(column: ColumnElement[float], value: float) -> ColumnElement[float]:
    """``max(column, value)`` in SQL that SQLite and PostgreSQL both speak (no GREATEST in SQLite)."""
    return case((column < value, value), else_=column)


class ProgressReporter:
    """Writes the latest progress to the database every few seconds from a side thread, and learns about
    cancellation there; the engine's callback only swaps a tuple and checks a flag, so it costs nothing."""

    def __init__(self, ctx: WorkerContext, rows: WorkRow, work: Work) -> None:
        self.ctx = ctx
        self.rows = rows
        self.job_id = work.job_id
        self.row_id = work.row_id
        self.attempt = work.attempt
        self._latest: tuple[int, int, str] = (0, 1, "starting")
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress-{work.row_id}", daemon=True)

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def update(self, step: int, total: int, message: str) -> None:
        self._latest = (step, total, message)
        if self._cancelled.is_set():
            raise Cancelled()

    def _loop(self) -> None:
        while not self._stop.wait(self.ctx.settings.progress_interval_s):
            try:
                self.flush()
            except Exception as exc:  # a database hiccup must not kill the evaluation
                log.warning("progress of %s not written: %s", self.row_id, exc)

    def flush(self) -> None:
        step, total, message = self._latest
        rows = self.rows
        with self.ctx.db.session() as s:
            mine = s.execute(
                update(rows)
                .where(rows.id == self.row_id, rows.status == "running", rows.attempts == self.attempt)
                .values(progress=at_least(rows.progress, min(step / max(total, 1), 0.99)), heartbeat_at=utcnow())
            ).rowcount
            overall = job_progress(s, self.job_id, rows)
            s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "running")
                .values(progress=at_least(Job.progress, overall), message=message[:500], updated_at=utcnow())
            )
            cancel, status = s.execute(select(Job.cancel_requested, Job.status).where(Job.id == self.job_id)).one()
        if cancel or status in TERMINAL_JOB_STATUSES:
            self._cancelled.set()
        elif not mine:  # the lease was lost (the recovery sweep re-sent this work): stop, another run owns it
            log.warning("%s: lease lost to another attempt; stopping", self.row_id)
            self._cancelled.set()


def run_reported(ctx: WorkerContext, rows: WorkRow, work: Work, body: Any) -> Any:
    """Run ``body(reporter)`` with progress reporting; None means cancelled, an exception a failure."""
    started = time.perf_counter()
    with ProgressReporter(ctx, rows, work) as reporter:
        try:
            return body(reporter)
        except Cancelled:
            return None
        finally:
            work.seconds = time.perf_counter() - started
