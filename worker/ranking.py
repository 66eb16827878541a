"""One ranking entry: BN-only evaluation of one candidate (or control), written over its row."""

from __future__ import annotations

import logging

from sqlalchemy import delete, update

from bnrank.engine.errors import BNRankError
from bnrank.engine.ranking import Candidate, RankEntry, evaluate_candidate
from service.core.jobflow import finalise
from service.core.models import (
    GammaStat,
    Job,
    RankingEntry,
    utcnow,
)
from service.core.results import entry_values
from worker.claims import Work, cancel_row, claim, gamma_of, read_work
from worker.context import WorkerContext
from worker.progress import ProgressReporter, run_reported

log = logging.getLogger(__name__)


def claim_entry(ctx: WorkerContext, job_id: str, entry_id: str) -> Work | None:
    """Mark the entry running and read what it needs; None when there is nothing (left) to do."""
    with ctx.db.session() as s:
        entry = s.get(RankingEntry, entry_id)
        job = s.get(Job, job_id)
        if entry is None or job is None or entry.job_id != job_id:
            log.warning("task for unknown entry %s of job %s: skipped", entry_id, job_id)
            return None
        attempt = claim(s, RankingEntry, job, entry, ctx.settings.lease_s)
        if not attempt:
            return None
        work = read_work(ctx, s, job, entry_id, entry.name, entry.checkpoint_id, attempt)
        if entry.is_control and work.dataset_uri is not None and work.params is not None:
            work.problem = None
            work.candidate = Candidate(
                name=entry.name,
                architecture=entry.architecture,
                network_def=entry.network_def,
                build_kwargs=dict(entry.build_kwargs or {}),
            )
        return work


def _evaluate(ctx: WorkerContext, work: Work, reporter: ProgressReporter) -> RankEntry:
    if work.problem:
        return RankEntry(checkpoint=work.name, status="failed", error=work.problem)
    assert work.candidate is not None and work.dataset_uri is not None and work.params is not None
    try:
        config = work.params.train_config(device=ctx.device)
        data = ctx.task_data(work.dataset_uri, work.skip_cases, config.seed)
    except (BNRankError, ValueError) as exc:
        return RankEntry(checkpoint=work.name, status="failed", error=str(exc))
    reporter.update(0, config.max_steps, f"{work.name}: starting")
    return evaluate_candidate(work.candidate, data, config, on_progress=reporter.update)


def save_entry(ctx: WorkerContext, work: Work, outcome: RankEntry | None) -> None:
    """Write the entry's result over its row (never a new row), then try to close the ranking."""
    with ctx.db.session() as s:
        if outcome is None:  # cancelled
            cancel_row(s, RankingEntry, work.row_id, work.attempt)
        else:
            values = {**entry_values(outcome), "progress": 1.0, "finished_at": utcnow()}
            written = s.execute(
                update(RankingEntry)
                .where(
                    RankingEntry.id == work.row_id,
                    RankingEntry.status == "running",
                    RankingEntry.attempts == work.attempt,
                )
                .values(**values)
            ).rowcount
            if written == 1:
                s.execute(delete(GammaStat).where(GammaStat.entry_id == work.row_id))
                s.add_all(gamma_of(ctx, work, outcome.gamma, entry_id=work.row_id))
        s.flush()
        finalise(s, work.job_id)


def run_rank_entry(ctx: WorkerContext, job_id: str, entry_id: str) -> str:
    """Evaluate one entry; returns its final status (or 'skipped' when there was nothing to do)."""
    work = claim_entry(ctx, job_id, entry_id)
    if work is None:
        return "skipped"
    log.info("evaluating %s (job %s)", work.name, job_id)
    try:
        outcome = run_reported(ctx, RankingEntry, work, lambda reporter: _evaluate(ctx, work, reporter))
    except Exception as exc:  # torch out of memory, a bug: still only this candidate fails
        log.exception("entry %s of job %s crashed", entry_id, job_id)
        outcome = RankEntry(checkpoint=work.name, status="failed", error=f"{type(exc).__name__}: {exc}")
    save_entry(ctx, work, outcome)
    status = "cancelled" if outcome is None else outcome.status
    log.info("%s: %s", work.name, status if outcome is None or not outcome.error else f"{status}: {outcome.error}")
    return status
