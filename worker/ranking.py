"""One ranking entry: BN-only evaluation of one candidate (or control), written over its row."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from bnrank.engine.entries import RankEntry
from bnrank.engine.errors import BNRankError
from bnrank.engine.fitting import remember_graph
from bnrank.engine.ranking import Candidate, evaluate_candidate, evaluate_round, halving_steps
from service.core.celery_app import make_celery
from service.core.jobflow import finalise
from service.core.jobs import Message, send_tasks
from service.core.models import (
    Checkpoint,
    GammaStat,
    Job,
    RankingEntry,
    utcnow,
)
from service.core.params import RankingParams
from service.core.results import entry_values
from worker.claims import Work, cancel_row, claim, gamma_of, read_work
from worker.context import WorkerContext
from worker.progress import ProgressReporter, run_reported

log = logging.getLogger(__name__)


def graph_source(ctx: WorkerContext, s: Session, job_id: str, architecture: str) -> Path | None:
    """The blob of a candidate of this job whose architecture is ``architecture`` (an ONNX graph's)."""
    blob = s.scalars(
        select(Checkpoint.blob_path)
        .join(RankingEntry, RankingEntry.checkpoint_id == Checkpoint.id)
        .where(RankingEntry.job_id == job_id, Checkpoint.architecture == architecture)
        .limit(1)
    ).first()
    return ctx.blobs.path(blob) if blob is not None else None


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
        work.halving_round = entry.halving_round
        if entry.is_control and work.dataset_uri is not None and work.params is not None:
            work.problem = None
            if (entry.architecture or "").startswith("onnx:"):  # built from the graph: read a file that has it
                work.graph_source = graph_source(ctx, s, job_id, entry.architecture)
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
        if work.graph_source is not None:
            remember_graph(work.graph_source)
        config = work.params.train_config(device=ctx.device)
        data = ctx.task_data(work.dataset_uri, work.skip_cases, config.seed)
    except (BNRankError, ValueError) as exc:
        return RankEntry(checkpoint=work.name, status="failed", error=str(exc))
    reporter.update(0, config.max_steps, f"{work.name}: starting")
    rank = work.params.rank_config() if isinstance(work.params, RankingParams) else None
    if rank is None or rank.halving_rounds == 1:
        return evaluate_candidate(work.candidate, data, config, on_progress=reporter.update)
    # Successive halving: this task trains the candidate from step 0 to its round's end (service/core/jobflow.py
    # sends the survivors on); progress counts against the last round's steps, so it stays below 1 until then.
    return evaluate_round(work.candidate, data, config, rank, work.halving_round or 1, on_progress=reporter.update)


def _progress_when_done(work: Work, outcome: RankEntry) -> float:
    """1, except after a halving round that is not the last: the share of the full budget trained so far (the
    job flow sets 1 for the candidates that stop there)."""
    params = work.params
    if outcome.halving_round is None or not isinstance(params, RankingParams):
        return 1.0
    config, rank = params.train_config(), params.rank_config()
    ends = halving_steps(config.max_steps, rank.halving_rounds, rank.halving_eta)
    return 1.0 if outcome.halving_round >= len(ends) else ends[outcome.halving_round - 1] / ends[-1]


def save_entry(ctx: WorkerContext, work: Work, outcome: RankEntry | None) -> None:
    """Write the entry's result over its row (never a new row), then try to close the ranking (or, under
    successive halving, start its next round: those messages are sent once this transaction has committed)."""
    outbox: list[Message] = []
    with ctx.db.session() as s:
        if outcome is None:  # cancelled
            cancel_row(s, RankingEntry, work.row_id, work.attempt)
        else:
            progress = _progress_when_done(work, outcome)
            values = {**entry_values(outcome), "progress": progress, "finished_at": utcnow()}
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
        finalise(s, work.job_id, outbox)
    if outbox:
        _send(ctx, outbox)


def _send(ctx: WorkerContext, messages: list[Message]) -> None:
    """Send the next halving round; if the broker refuses, the rows wait queued and the recovery sweep re-sends
    them once ``requeue_after_s`` has passed (the broker holds none of their task ids)."""
    try:
        send_tasks(make_celery(ctx.settings), ctx.settings.queue, messages)
    except Exception as exc:  # kombu raises a zoo of connection errors
        log.warning("next halving round not sent (the recovery sweep will): %s", exc)


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
