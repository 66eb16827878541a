"""The one unit-of-work loop: claim → run → save → γ rows → finalise → log, for every job kind.

A kind's worker side is a `Unit`: how it finds and claims its row, what it runs (the engine), the columns and
γ statistics of a result, and the side effects a result carries (alchemy's weights). The loop owns the rest,
the same for ranking entries, alchemy folds and probe folds: progress reporting and cooperative cancel
(worker/progress.py), the one failure path (a problem with the input fails the row with its reason; anything
else is logged with its traceback and fails only this row), the conditional write that a run whose lease was
taken over cannot win, replacing the row's γ rows, finalising the job and sending what finalising queued.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from bnrank.engine.errors import BNRankError
from service.core.celery_app import make_celery
from service.core.jobflow import finalise
from service.core.kinds.base import JobKind, Message
from service.core.models import GammaStat, utcnow
from worker.claims import cancel_row, gamma_of
from worker.context import WorkerContext
from worker.progress import ProgressReporter, run_reported
from worker.work import Work

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a run came to: a result, a failure (``error``), or neither (cancelled)."""

    result: Any = None
    error: str | None = None
    weights: Any = None
    """A file the result refers to (alchemy's fine-tuned weights), adopted into the blob store when saved."""

    @property
    def cancelled(self) -> bool:
        return self.result is None and self.error is None


class Unit:
    """A kind's part of the loop; subclasses fill in claiming, running and the columns of a result."""

    kind: ClassVar[JobKind]
    verb: ClassVar[str] = "running"
    """How the log line that starts a run reads (``evaluating``, ``alchemy on``)."""
    log_key: ClassVar[str] = "fold"
    """The log context's field naming the unit (``entry_id`` or ``fold``)."""

    def claim(self, ctx: WorkerContext, job_id: str, key: Any) -> Work | None:
        """Mark the row running and read what it needs; None when there is nothing (left) to do."""
        raise NotImplementedError

    def run(self, ctx: WorkerContext, work: Work, reporter: ProgressReporter) -> Outcome:
        """Run the engine; raise BNRankError or ValueError for a problem with the input."""
        raise NotImplementedError

    def values(self, work: Work, result: Any) -> dict[str, Any]:
        """The row's columns for a result (its status among them)."""
        raise NotImplementedError

    def failure_values(self, work: Work, error: str) -> dict[str, Any]:
        """The row's columns when the run failed."""
        return {"status": "failed", "error": error[:4000], "progress": 1.0, "seconds": work.seconds}

    def gamma(self, result: Any) -> dict[str, Any]:
        """The result's γ statistics by stored phase (empty: none)."""
        return {}

    def gamma_link(self, work: Work) -> dict[str, Any]:
        """What the γ rows of this unit are linked by, beside checkpoint, dataset and job."""
        raise NotImplementedError

    def attach(self, ctx: WorkerContext, s: Session, work: Work, outcome: Outcome) -> tuple[dict[str, Any], Any]:
        """Side effects of a result written before its row (e.g. an artifact): extra columns, and what to undo
        (delete) when the row turns out not to be this run's any more."""
        return {}, None

    def status(self, outcome: Outcome) -> str:
        if outcome.cancelled:
            return "cancelled"
        return "failed" if outcome.error else "ok"


def _mine(rows: Any, work: Work) -> tuple[Any, ...]:
    """The condition that this run still owns its row (see `worker.claims.claim`)."""
    return (rows.id == work.row_id, rows.status == "running", rows.attempts == work.attempt)


def run_work(ctx: WorkerContext, unit: Unit, work: Work) -> Outcome:
    """Run the unit with progress reporting; the one failure path of every kind."""
    try:
        outcome = run_reported(ctx, unit.kind.rows, work, lambda reporter: unit.run(ctx, work, reporter))
    except (BNRankError, ValueError) as exc:
        return Outcome(error=str(exc))
    except Exception as exc:  # out of memory, a bug: only this unit fails
        log.exception("%s of job %s crashed", work.name, work.job_id)
        return Outcome(error=f"{type(exc).__name__}: {exc}")
    return Outcome() if outcome is None else outcome


def save(ctx: WorkerContext, unit: Unit, work: Work, outcome: Outcome) -> None:
    """Write the outcome over the row (never a new row), replace its γ rows, then try to close the job; what
    closing queued (the next halving round) is sent once this transaction has committed."""
    rows = unit.kind.rows
    outbox: list[Message] = []
    with ctx.db.session() as s:
        if outcome.cancelled:
            cancel_row(s, rows, work.row_id, work.attempt)
        elif outcome.error is not None:
            values = {**unit.failure_values(work, outcome.error), "finished_at": utcnow()}
            s.execute(update(rows).where(*_mine(rows, work)).values(**values))
        else:
            extra, undo = unit.attach(ctx, s, work, outcome)
            values = {**unit.values(work, outcome.result), **extra, "finished_at": utcnow()}
            written = s.execute(update(rows).where(*_mine(rows, work)).values(**values)).rowcount
            if written == 1:
                link = unit.gamma_link(work)
                mine = (getattr(GammaStat, k) == v for k, v in link.items())
                s.execute(delete(GammaStat).where(GammaStat.job_id == work.job_id, *mine))
                s.add_all(gamma_of(ctx, work, unit.gamma(outcome.result), **link))
            elif undo is not None:
                s.delete(undo)
        s.flush()
        finalise(s, work.job_id, outbox)
    if outbox:
        _send(ctx, outbox)


def _send(ctx: WorkerContext, messages: list[Message]) -> None:
    """Send what finalising queued; if the broker refuses, the rows wait queued and the recovery sweep re-sends
    them once ``requeue_after_s`` has passed (the broker holds none of their task ids)."""
    try:
        ctx.queues.send(make_celery(ctx.settings), messages)
    except Exception as exc:  # kombu raises a zoo of connection errors
        log.warning("next tasks not sent (the recovery sweep will): %s", exc)


def run_unit(ctx: WorkerContext, unit: Unit, job_id: str, key: Any) -> str:
    """Claim, run and save one unit of work; its final status, or 'skipped' when there was nothing to do."""
    work = unit.claim(ctx, job_id, key)
    if work is None:
        return "skipped"
    log.info("%s %s (job %s)", unit.verb, work.name, job_id)
    outcome = run_work(ctx, unit, work)
    try:
        save(ctx, unit, work, outcome)
    finally:
        if outcome.weights is not None:
            outcome.weights.unlink(missing_ok=True)
    status = unit.status(outcome) if outcome.error is None else "failed"
    log.info("%s: %s", work.name, status if not outcome.error else f"{status}: {outcome.error}")
    return status
