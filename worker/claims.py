"""Claiming a unit of work (a ranking entry or a fold) and reading what it needs, once, from the database.

The claim is a conditional update whose attempt number is the run's token: every later write of the run
is conditional on it, so a run whose lease was taken over (see service.core.recovery) can no longer write.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from bnrank.engine.ranking import Candidate
from service.core.jobflow import finalise
from service.core.kinds import kind_of
from service.core.models import (
    TERMINAL_ENTRY_STATUSES,
    TERMINAL_JOB_STATUSES,
    AlchemyResult,
    Checkpoint,
    Dataset,
    GammaStat,
    Job,
    RankingEntry,
    utcnow,
)
from service.core.params import JobParams
from service.core.results import gamma_rows
from worker.context import WorkerContext
from worker.work import Work, WorkRow

log = logging.getLogger(__name__)


def cancel_row(s: Session, rows: WorkRow, row_id: str, attempt: int | None = None) -> None:
    """Cancel a row; with ``attempt``, only if that run still owns it (its lease was not taken over)."""
    query = update(rows).where(rows.id == row_id, rows.status.in_(("queued", "running")))
    if attempt is not None:
        query = query.where(rows.attempts == attempt)
    s.execute(query.values(status="cancelled", progress=1.0, finished_at=utcnow()))


def claim(s: Session, rows: WorkRow, job: Job, row: RankingEntry | AlchemyResult, lease_s: float) -> int:
    """Mark a row running (and its job, if this is the first); the attempt number, or 0 for nothing to do.

    A row already finished is a redelivery of done work; a row of a cancelled or ended job is cancelled.
    Either way the job may now be complete, so finalising is attempted. A row another worker is running
    (its heartbeat younger than the lease) is left to it: this is a duplicate delivery. The attempt number
    is the claim's token: every later write of this run is conditional on it, so a run whose lease was taken
    over can no longer write.
    """
    if row.status in TERMINAL_ENTRY_STATUSES:
        finalise(s, job.id)
        return 0
    if job.status in TERMINAL_JOB_STATUSES or job.cancel_requested:
        cancel_row(s, rows, row.id)
        s.flush()
        finalise(s, job.id)
        return 0
    now = utcnow()
    live = now - timedelta(seconds=lease_s)
    claimed = s.execute(
        update(rows)
        .where(
            rows.id == row.id,
            rows.attempts == row.attempts,
            or_(
                rows.status == "queued",
                (rows.status == "running") & or_(rows.heartbeat_at.is_(None), rows.heartbeat_at <= live),
            ),
        )
        # progress is kept: a redelivered row starts again from step 0, but what clients see never goes back
        .values(status="running", attempts=row.attempts + 1, started_at=now, heartbeat_at=now, error=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        log.info("%s is being run by another worker: this delivery is a duplicate, skipped", row.id)
        return 0
    s.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(status="running", started_at=now))
    return row.attempts + 1


def job_params(job: Job) -> JobParams | None:
    """The job's stored parameters, typed; None (the work then fails with the reason logged) when unreadable."""
    try:
        return kind_of(job.kind).read(job.params)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        log.error("job %s: its parameters cannot be read: %s", job.id, exc)
        return None


def read_work(
    ctx: WorkerContext, s: Session, job: Job, row_id: str, name: str, checkpoint_id: str | None, attempt: int
) -> Work:
    dataset = s.get(Dataset, job.dataset_id) if job.dataset_id else None
    work = Work(
        job_id=job.id,
        row_id=row_id,
        owner=job.owner,
        name=name,
        params=job_params(job),
        dataset_id=job.dataset_id,
        dataset_uri=dataset.uri if dataset else None,
        skip_cases={p["case_id"] for p in (dataset.problems if dataset else [])},
        checkpoint_id=checkpoint_id,
        attempt=attempt,
    )
    if work.params is None:
        work.problem = "the job's parameters cannot be read (see the worker log)"
    elif dataset is None:
        work.problem = "the dataset of this job no longer exists"
    elif checkpoint_id is None:
        work.problem = "the checkpoint was deleted before it could be used"
    else:
        ckpt = s.get(Checkpoint, checkpoint_id)
        assert ckpt is not None  # the foreign keys set checkpoint_id to NULL on delete
        work.candidate = Candidate(
            name=name,
            path=ctx.blobs.fetch(ckpt.blob_path, ckpt.sha256),
            architecture=None if ckpt.network_def else ckpt.architecture,
            network_def=ckpt.network_def,
            head=ckpt.head,
        )
    return work


def gamma_of(ctx: WorkerContext, work: Work, stats_by_phase: dict[str, Any], **link: Any) -> list[GammaStat]:
    """γ statistics of this work's result as rows, linked to its checkpoint, dataset and job."""
    return gamma_rows(
        stats_by_phase,
        ctx.settings.gamma_threshold,
        checkpoint_id=work.checkpoint_id,
        dataset_id=work.dataset_id,
        job_id=work.job_id,
        **link,
    )
