"""The ranking's unit of work: BN-only evaluation of one candidate (or control), written over its entry row."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bnrank.engine.cascade import evaluate_control, race_config, race_ends, stage_config
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankEntry
from bnrank.engine.errors import BNRankError
from bnrank.engine.finetune_run import FineTuneRun
from bnrank.engine.fitting import remember_graph
from bnrank.engine.halving import halving_steps
from bnrank.engine.ranking import Candidate, evaluate_candidate, evaluate_round, fill_entry
from bnrank.engine.training.patches import TaskData
from service.core.kinds.ranking import KIND
from service.core.models import Checkpoint, Job, RankingEntry
from service.core.params import RankingParams
from service.core.results import entry_values
from worker.claims import claim, read_work
from worker.context import WorkerContext
from worker.progress import ProgressReporter
from worker.unit import Outcome, Unit, run_unit
from worker.work import Work

log = logging.getLogger(__name__)


def _progress_when_done(work: Work, outcome: RankEntry) -> float:
    """1, except after a halving round that is not the last: the share of the full budget trained so far (the
    job flow sets 1 for the candidates that stop there)."""
    params = work.params
    if outcome.halving_round is None or not isinstance(params, RankingParams):
        return 1.0
    config, rank = params.train_config(), params.rank_config()
    ends = halving_steps(config.max_steps, rank.halving_rounds, rank.halving_eta)
    return 1.0 if outcome.halving_round >= len(ends) else ends[outcome.halving_round - 1] / ends[-1]


def run_cascade_row(
    work: Work, data: TaskData, config: TrainConfig, rank: RankConfig, reporter: ProgressReporter
) -> RankEntry:
    """One row of a cascade: norm-only evaluation at the stage's budget (at the row's seed, for a control), or one
    racer's fine-tuning run at one seed from step 0 to its round's end (the engine's continued runs score alike)."""
    assert work.candidate is not None
    budget, _ = stage_config(config, data)
    if work.stage != "race":
        if work.candidate.is_control and work.seed is not None:  # the first control seed also calibrates the cap
            entry = evaluate_control(work.candidate, data, budget, rank, work.seed)
        else:
            seeded = replace(budget, seed=work.seed) if work.seed is not None else budget
            entry = evaluate_candidate(work.candidate, data, seeded, on_progress=reporter.update)
        entry.checkpoint = work.name
        return entry
    ends, round_ = race_ends(rank), work.halving_round or 1
    entry = RankEntry(checkpoint=work.name, halving_round=round_)
    started = time.perf_counter()
    try:
        race = race_config(budget, rank, work.seed if work.seed is not None else config.seed)
        run = FineTuneRun(work.candidate, data, race, score_at=ends, on_progress=reporter.update).run(ends[round_ - 1])
    except BNRankError as exc:
        entry.status, entry.error = "failed", str(exc)
        entry.seconds = round(time.perf_counter() - started, 3)
        return entry
    entry.architecture = run.architecture
    fill_entry(entry, run.result())
    entry.seconds = round(time.perf_counter() - started, 3)  # the whole row (building included): what the cap counts
    return entry


def graph_source(ctx: WorkerContext, s: Session, job_id: str, architecture: str) -> tuple[Path, str | None] | None:
    """The blob of a candidate of this job whose architecture is ``architecture`` (an ONNX graph's), and the head
    its uploader named: a worker process that has not read one cannot build the graph's random-init control by
    name (the name covers the head, so the graph is read with the same one)."""
    row = s.execute(
        select(Checkpoint.blob_path, Checkpoint.head)
        .join(RankingEntry, RankingEntry.checkpoint_id == Checkpoint.id)
        .where(RankingEntry.job_id == job_id, Checkpoint.architecture == architecture)
        .limit(1)
    ).first()
    return (ctx.blobs.path(row.blob_path), row.head) if row is not None else None


class RankingUnit(Unit):
    kind = KIND
    verb = "evaluating"
    log_key = "entry_id"

    def claim(self, ctx: WorkerContext, job_id: str, key: Any) -> Work | None:
        with ctx.db.session() as s:
            entry = s.get(RankingEntry, key)
            job = s.get(Job, job_id)
            if entry is None or job is None or entry.job_id != job_id:
                log.warning("task for unknown entry %s of job %s: skipped", key, job_id)
                return None
            attempt = claim(s, RankingEntry, job, entry, ctx.settings.lease_s)
            if not attempt:
                return None
            work = read_work(ctx, s, job, key, entry.name, entry.checkpoint_id, attempt)
            work.halving_round = entry.halving_round
            work.stage, work.seed = entry.stage, entry.seed
            if entry.is_control and work.dataset_uri is not None and work.params is not None:
                work.problem = None
                if (entry.architecture or "").startswith("onnx:"):  # built from the graph: read a file with it
                    work.graph_source = graph_source(ctx, s, job_id, entry.architecture)
                work.candidate = Candidate(
                    name=entry.name,
                    architecture=entry.architecture,
                    network_def=entry.network_def,
                    build_kwargs=dict(entry.build_kwargs or {}),
                )
            return work

    def run(self, ctx: WorkerContext, work: Work, reporter: ProgressReporter) -> Outcome:
        if work.problem:
            raise BNRankError(work.problem)
        assert work.candidate is not None and work.dataset_uri is not None and work.params is not None
        if work.graph_source is not None:
            path, head = work.graph_source
            remember_graph(path, head=head)
        config = work.params.train_config(device=ctx.device)
        data = ctx.task_data(work.dataset_uri, work.skip_cases, config.seed)
        reporter.update(0, config.max_steps, f"{work.name}: starting")
        rank = work.params.rank_config() if isinstance(work.params, RankingParams) else None
        if rank is not None and rank.strategy == "cascade":
            return Outcome(run_cascade_row(work, data, config, rank, reporter))
        if rank is None or rank.halving_rounds == 1:
            return Outcome(evaluate_candidate(work.candidate, data, config, on_progress=reporter.update))
        # Successive halving: this task trains the candidate from step 0 to its round's end (the ranking kind
        # sends the survivors on); progress counts against the last round's steps, so it stays below 1 until then.
        round_ = work.halving_round or 1
        return Outcome(evaluate_round(work.candidate, data, config, rank, round_, on_progress=reporter.update))

    def values(self, work: Work, result: RankEntry) -> dict[str, Any]:
        return {**entry_values(result), "progress": _progress_when_done(work, result)}

    def failure_values(self, work: Work, error: str) -> dict[str, Any]:
        """A failed entry's columns, as the engine's failed `RankEntry` has them."""
        return self.values(work, RankEntry(checkpoint=work.name, status="failed", error=error))

    def gamma(self, result: RankEntry) -> dict[str, Any]:
        return result.gamma

    def gamma_link(self, work: Work) -> dict[str, Any]:
        return {"entry_id": work.row_id}

    def status(self, outcome: Outcome) -> str:
        return "cancelled" if outcome.cancelled else outcome.result.status


UNIT = RankingUnit()


def run_rank_entry(ctx: WorkerContext, job_id: str, entry_id: str) -> str:
    """Evaluate one entry; returns its final status (or 'skipped' when there was nothing to do)."""
    return run_unit(ctx, UNIT, job_id, entry_id)
