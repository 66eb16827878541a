"""Celery tasks: one evaluates one ranking entry, another runs one alchemy fold; each writes its row.

The Celery functions are thin; the work is in plain functions taking a `WorkerContext`, so tests can run
a task body in-process against the same database to check what a redelivery does.

A task never raises for a problem with its input (bad file, NaN loss, dataset changed): its row is marked
failed with the reason, and the rest of the job goes on. Cancel is cooperative: a reporter thread writes
progress every few seconds and reads the job's cancel flag; the engine's progress callback then raises
`Cancelled` at the next step it reports. Claiming, finishing and closing jobs follow service.jobflow.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeAlias

from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from bnrank.engine.data import PreprocessConfig, compute_fingerprint, open_dataset, preprocess
from bnrank.engine.errors import BNRankError, DatasetError
from bnrank.engine.ranking import Candidate, RankEntry, evaluate_candidate
from bnrank.engine.task import make_task
from bnrank.engine.threads import configure_threads
from bnrank.engine.training import TaskData, TrainConfig
from service.blobs import BlobStore
from service.broker import BrokerProbe
from service.config import Settings, get_settings
from service.db import Database
from service.jobflow import TASK_ALCHEMY, TASK_PROBE, TASK_RANK_ENTRY, finalise, job_progress, train_config
from service.launcher import READY_FILE_ENV
from service.logs import job_context
from service.models import (
    TERMINAL_ENTRY_STATUSES,
    TERMINAL_JOB_STATUSES,
    AlchemyResult,
    Artifact,
    Checkpoint,
    Dataset,
    GammaStat,
    Job,
    RankingEntry,
    utcnow,
)
from service.paths import PathRefused, resolve_in_roots
from service.recovery import Sweeper
from worker.celery_app import app

log = logging.getLogger(__name__)

TASK_CACHE_SIZE = 2  # preprocessed datasets kept in memory per process (a ranking uses one)


class Cancelled(Exception):
    """Raised from the engine's progress callback when the job was cancelled. Not a BNRankError, so the
    engine does not turn it into a failed entry."""


class WorkerContext:
    """Per-process resources, created on first use (after a prefork child has forked)."""

    def __init__(self, settings: Settings) -> None:
        import torch

        self.settings = settings
        self.db = Database(settings, pool_size=2)
        self.blobs = BlobStore(settings.blobs)
        if settings.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self.device = settings.device
        self.threads = configure_threads(
            concurrent_jobs=settings.worker_concurrency, threads=settings.torch_threads or None
        )
        self._tasks: OrderedDict[tuple[str, int], TaskData] = OrderedDict()
        self._tasks_lock = threading.Lock()
        log.info("worker process ready: device %s, %d torch thread(s)", self.device, self.threads)

    def task_data(self, uri: str, skip_cases: set[str], seed: int) -> TaskData:
        """The dataset as training volumes; preprocessing is cached on disk (shared) and in memory (here)."""
        try:
            folder = resolve_in_roots(uri, self.settings.data_roots)
        except PathRefused as exc:
            raise DatasetError(f"dataset is no longer usable: {exc}") from exc
        dataset = open_dataset(folder, check=False)
        # Cases the registration check refused stay out; the others were read in full back then.
        dataset.cases = [c for c in dataset.cases if c.case_id not in skip_cases]
        config = PreprocessConfig()
        key = (compute_fingerprint(dataset, config), seed)
        with self._tasks_lock:
            if key in self._tasks:
                self._tasks.move_to_end(key)
                return self._tasks[key]
        pre = preprocess(dataset, config, cache_root=self.settings.preprocess_cache)
        data = make_task(pre, seed=seed)
        with self._tasks_lock:
            self._tasks[key] = data
            while len(self._tasks) > TASK_CACHE_SIZE:
                self._tasks.popitem(last=False)
        return data


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def context() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            _context = WorkerContext(get_settings())
        return _context


# ------------------------------------------------------------------------------------------ progress

WorkRow: TypeAlias = type[RankingEntry] | type[AlchemyResult]


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
                .values(progress=min(step / max(total, 1), 0.99), heartbeat_at=utcnow())
            ).rowcount
            s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "running")
                .values(progress=job_progress(s, self.job_id, rows), message=message[:500], updated_at=utcnow())
            )
            cancel, status = s.execute(select(Job.cancel_requested, Job.status).where(Job.id == self.job_id)).one()
        if cancel or status in TERMINAL_JOB_STATUSES:
            self._cancelled.set()
        elif not mine:  # the lease was lost (the recovery sweep re-sent this work): stop, another run owns it
            log.warning("%s: lease lost to another attempt; stopping", self.row_id)
            self._cancelled.set()


# ------------------------------------------------------------------------------------------- claiming


def _cancel_row(s: Session, rows: WorkRow, row_id: str, attempt: int | None = None) -> None:
    """Cancel a row; with ``attempt``, only if that run still owns it (its lease was not taken over)."""
    query = update(rows).where(rows.id == row_id, rows.status.in_(("queued", "running")))
    if attempt is not None:
        query = query.where(rows.attempts == attempt)
    s.execute(query.values(status="cancelled", progress=1.0, finished_at=utcnow()))


def _claim(s: Session, rows: WorkRow, job: Job, row: RankingEntry | AlchemyResult, lease_s: float) -> int:
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
        _cancel_row(s, rows, row.id)
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
        .values(status="running", attempts=row.attempts + 1, started_at=now, heartbeat_at=now, progress=0.0, error=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        log.info("%s is being run by another worker: this delivery is a duplicate, skipped", row.id)
        return 0
    s.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(status="running", started_at=now))
    return row.attempts + 1


@dataclass
class Work:
    """What a task needs from the database, read once while claiming its row."""

    job_id: str
    row_id: str
    owner: str
    name: str
    params: dict[str, Any]
    dataset_id: str | None
    dataset_uri: str | None
    skip_cases: set[str]
    checkpoint_id: str | None
    attempt: int = 0
    seconds: float = 0.0
    candidate: Candidate | None = None
    problem: str | None = None


def _work(
    ctx: WorkerContext, s: Session, job: Job, row_id: str, name: str, checkpoint_id: str | None, attempt: int
) -> Work:
    dataset = s.get(Dataset, job.dataset_id) if job.dataset_id else None
    work = Work(
        job_id=job.id,
        row_id=row_id,
        owner=job.owner,
        name=name,
        params=dict(job.params),
        dataset_id=job.dataset_id,
        dataset_uri=dataset.uri if dataset else None,
        skip_cases={p["case_id"] for p in (dataset.problems if dataset else [])},
        checkpoint_id=checkpoint_id,
        attempt=attempt,
    )
    if dataset is None:
        work.problem = "the dataset of this job no longer exists"
    elif checkpoint_id is None:
        work.problem = "the checkpoint was deleted before it could be used"
    else:
        ckpt = s.get(Checkpoint, checkpoint_id)
        assert ckpt is not None  # the foreign keys set checkpoint_id to NULL on delete
        work.candidate = Candidate(
            name=name,
            path=ctx.blobs.path(ckpt.blob_path),
            architecture=None if ckpt.network_def else ckpt.architecture,
            network_def=ckpt.network_def,
        )
    return work


def _gamma_rows(work: Work, stats_by_phase: dict[str, dict[str, Any]], threshold: float, **link: Any) -> list:
    return [
        GammaStat(
            checkpoint_id=work.checkpoint_id,
            dataset_id=work.dataset_id,
            job_id=work.job_id,
            phase=phase,
            threshold=float(stats["summary"].get("threshold", threshold)),
            summary=stats["summary"],
            histogram=stats["histogram"],
            layers=stats["layers"],
            **link,
        )
        for phase, stats in stats_by_phase.items()
        if stats
    ]


# ------------------------------------------------------------------------------------------- ranking


def claim_entry(ctx: WorkerContext, job_id: str, entry_id: str) -> Work | None:
    """Mark the entry running and read what it needs; None when there is nothing (left) to do."""
    with ctx.db.session() as s:
        entry = s.get(RankingEntry, entry_id)
        job = s.get(Job, job_id)
        if entry is None or job is None or entry.job_id != job_id:
            log.warning("task for unknown entry %s of job %s: skipped", entry_id, job_id)
            return None
        attempt = _claim(s, RankingEntry, job, entry, ctx.settings.lease_s)
        if not attempt:
            return None
        work = _work(ctx, s, job, entry_id, entry.name, entry.checkpoint_id, attempt)
        if entry.is_control and work.dataset_uri is not None:
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
    assert work.candidate is not None and work.dataset_uri is not None
    try:
        config = train_config(work.params, device=ctx.device)
        data = ctx.task_data(work.dataset_uri, work.skip_cases, config.seed)
    except (BNRankError, ValueError) as exc:
        return RankEntry(checkpoint=work.name, status="failed", error=str(exc))
    reporter.update(0, config.max_steps, f"{work.name}: starting")
    return evaluate_candidate(work.candidate, data, config, on_progress=reporter.update)


def save_entry(ctx: WorkerContext, work: Work, outcome: RankEntry | None) -> None:
    """Write the entry's result over its row (never a new row), then try to close the ranking."""
    with ctx.db.session() as s:
        if outcome is None:  # cancelled
            _cancel_row(s, RankingEntry, work.row_id, work.attempt)
        else:
            values: dict[str, Any] = {
                "status": outcome.status,
                "score": outcome.score,
                "dice_per_class": outcome.dice_per_class,
                "curve": outcome.curve,
                "steps": outcome.steps,
                "seconds": outcome.seconds,
                "error": outcome.error if outcome.status != "ok" else None,
                "load_report": outcome.load_report,
                "progress": 1.0,
                "finished_at": utcnow(),
            }
            if outcome.architecture:
                values["architecture"] = outcome.architecture
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
                phases = {"raw": outcome.gamma.get("before", {}), "after_bn": outcome.gamma.get("after", {})}
                s.add_all(_gamma_rows(work, phases, ctx.settings.gamma_threshold, entry_id=work.row_id))
        s.flush()
        finalise(s, work.job_id)


def _run(ctx: WorkerContext, rows: WorkRow, work: Work, body: Any) -> Any:
    """Run ``body(reporter)`` with progress reporting; None means cancelled, an exception a failure."""
    started = time.perf_counter()
    with ProgressReporter(ctx, rows, work) as reporter:
        try:
            return body(reporter)
        except Cancelled:
            return None
        finally:
            work.seconds = time.perf_counter() - started


def run_rank_entry(ctx: WorkerContext, job_id: str, entry_id: str) -> str:
    """Evaluate one entry; returns its final status (or 'skipped' when there was nothing to do)."""
    work = claim_entry(ctx, job_id, entry_id)
    if work is None:
        return "skipped"
    log.info("evaluating %s (job %s)", work.name, job_id)
    try:
        outcome = _run(ctx, RankingEntry, work, lambda reporter: _evaluate(ctx, work, reporter))
    except Exception as exc:  # torch out of memory, a bug: still only this candidate fails
        log.exception("entry %s of job %s crashed", entry_id, job_id)
        outcome = RankEntry(checkpoint=work.name, status="failed", error=f"{type(exc).__name__}: {exc}")
    save_entry(ctx, work, outcome)
    status = "cancelled" if outcome is None else outcome.status
    log.info("%s: %s", work.name, status if outcome is None or not outcome.error else f"{status}: {outcome.error}")
    return status


# ------------------------------------------------------------------------------------------- alchemy

# Engine γ phases → the phase names stored in gamma_stats.
ALCHEMY_GAMMA_PHASES = {
    "raw": "raw",
    "after_identification": "after_bn",
    "after_modification": "modified",
    "after_alchemy": "after_alchemy",
    "after_training": "after_alchemy",
}


def claim_fold(ctx: WorkerContext, job_id: str, fold: int) -> Work | None:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        row = s.scalars(select(AlchemyResult).where(AlchemyResult.job_id == job_id, AlchemyResult.fold == fold)).first()
        if job is None or row is None:
            log.warning("task for unknown fold %s of job %s: skipped", fold, job_id)
            return None
        attempt = _claim(s, AlchemyResult, job, row, ctx.settings.lease_s)
        if not attempt:
            return None
        checkpoint_id = job.params.get("checkpoint_id")
        ckpt = s.get(Checkpoint, checkpoint_id) if checkpoint_id else None
        name = f"{ckpt.name if ckpt else 'checkpoint'} fold {fold}"
        return _work(ctx, s, job, row.id, name, ckpt.id if ckpt else None, attempt)


def _fold_task(ctx: WorkerContext, work: Work, fold: int) -> tuple[TrainConfig, TaskData]:
    """The training config and the data of one fold (all of the dataset when the job has one fold)."""
    from bnrank.engine.folds import fold_tasks

    if work.problem:
        raise BNRankError(work.problem)
    assert work.candidate is not None and work.dataset_uri is not None
    config = train_config(work.params, device=ctx.device)
    data = ctx.task_data(work.dataset_uri, work.skip_cases, config.seed)
    folds = int(work.params.get("folds", 1))
    if folds > 1:
        data = fold_tasks(data, folds, config.seed)[fold]
    return config, data


def _run_fold(ctx: WorkerContext, work: Work, fold: int, body: Any, what: str) -> tuple[Any, str | None]:
    """Run a fold's ``body(reporter)``: (its result, None), (None, None) when cancelled, or (None, why)."""
    try:
        return _run(ctx, AlchemyResult, work, body), None
    except (BNRankError, ValueError) as exc:
        return None, str(exc)
    except Exception as exc:  # out of memory, a bug: only this fold fails
        log.exception("%s fold %s of job %s crashed", what, fold, work.job_id)
        return None, f"{type(exc).__name__}: {exc}"


def _mine(work: Work) -> tuple[Any, ...]:
    """The condition that this run still owns its fold's row (see `_claim`)."""
    rows = AlchemyResult
    return (rows.id == work.row_id, rows.status == "running", rows.attempts == work.attempt)


def _end_fold(s: Session, work: Work, outcome: Any, error: str | None) -> bool:
    """Write a cancelled or failed fold; False when the fold succeeded and its result is still to write."""
    if outcome is None and error is None:
        _cancel_row(s, AlchemyResult, work.row_id, work.attempt)
    elif error is not None:
        s.execute(
            update(AlchemyResult)
            .where(*_mine(work))
            .values(status="failed", error=error[:4000], progress=1.0, seconds=work.seconds, finished_at=utcnow())
        )
    else:
        return False
    return True


def _alchemy(ctx: WorkerContext, work: Work, fold: int, reporter: ProgressReporter) -> tuple[Any, Path]:
    from bnrank.engine.alchemy import AlchemyOptions, alchemy_checkpoint

    config, data = _fold_task(ctx, work, fold)
    assert work.candidate is not None
    options = AlchemyOptions(**work.params["options"])
    out = ctx.blobs.tmp_dir / f"{secrets.token_hex(16)}.safetensors"
    result, _ = alchemy_checkpoint(
        work.candidate.path,  # type: ignore[arg-type]
        data,
        config,
        options,
        out=out,
        architecture=work.candidate.architecture,
        network_def=work.candidate.network_def,
        dataset_name=work.dataset_uri,
        on_progress=reporter.update,
    )
    return result, out


def save_fold(ctx: WorkerContext, work: Work, fold: int, outcome: Any, weights: Path | None, error: str | None) -> None:
    """Fine-tuned weights into the blob store (an artifact), the fold's result over its row, then finalise."""
    with ctx.db.session() as s:
        if not _end_fold(s, work, outcome, error):
            assert weights is not None
            blob_path, sha256, size = ctx.blobs.adopt(weights)
            mode = outcome.mode
            artifact = Artifact(
                owner=work.owner,
                job_id=work.job_id,
                kind="weights",
                name=f"{work.name.replace(' ', '.')}.{mode}.safetensors",
                sha256=sha256,
                size=size,
                blob_path=blob_path,
            )
            s.add(artifact)
            s.flush()
            metrics = {
                "mode": mode,
                "steps": outcome.steps,
                "seconds": outcome.seconds,
                "curve": outcome.curve,
                "identification": outcome.identification,
                "selection": outcome.selection,
                "r_gamma": outcome.r_gamma,
                "warnings": outcome.warnings,
                "options": outcome.options,
                "n_train": outcome.n_train,
                "n_val": outcome.n_val,
                "val_cases": outcome.val_cases,
            }
            written = s.execute(
                update(AlchemyResult)
                .where(*_mine(work))
                .values(
                    status="ok",
                    dice={"score": outcome.score, "per_class": outcome.dice_per_class},
                    reinitialised=outcome.modification or {},
                    metrics=metrics,
                    artifact_id=artifact.id,
                    progress=1.0,
                    seconds=work.seconds,
                    error=None,
                    finished_at=utcnow(),
                )
            ).rowcount
            if written == 1:
                s.execute(delete(GammaStat).where(GammaStat.job_id == work.job_id, GammaStat.fold == fold))
                phases = {ALCHEMY_GAMMA_PHASES[k]: v for k, v in outcome.gamma.items() if k in ALCHEMY_GAMMA_PHASES}
                s.add_all(_gamma_rows(work, phases, ctx.settings.gamma_threshold, fold=fold))
            else:
                s.delete(artifact)
        s.flush()
        finalise(s, work.job_id)


def run_alchemy_fold(ctx: WorkerContext, job_id: str, fold: int) -> str:
    work = claim_fold(ctx, job_id, fold)
    if work is None:
        return "skipped"
    log.info("alchemy on %s (job %s)", work.name, job_id)
    weights: Path | None = None
    outcome = None
    ran, error = _run_fold(ctx, work, fold, lambda reporter: _alchemy(ctx, work, fold, reporter), "alchemy")
    if ran is not None:
        outcome, weights = ran
    try:
        save_fold(ctx, work, fold, outcome, weights, error)
    finally:
        if weights is not None:
            weights.unlink(missing_ok=True)
    status = "failed" if error else ("cancelled" if outcome is None else "ok")
    log.info("%s: %s", work.name, status if not error else f"{status}: {error}")
    return status


# --------------------------------------------------------------------------------------------- probe


def _probe(ctx: WorkerContext, work: Work, fold: int, reporter: ProgressReporter) -> Any:
    from bnrank.engine.probe import probe_checkpoint

    config, data = _fold_task(ctx, work, fold)
    assert work.candidate is not None
    return probe_checkpoint(
        work.candidate.path,  # type: ignore[arg-type]
        data,
        config,
        work.params["thresholds"],
        draws=int(work.params["draws"]),
        architecture=work.candidate.architecture,
        network_def=work.candidate.network_def,
        dataset_name=work.dataset_uri,
        on_progress=reporter.update,
    )


def save_probe(ctx: WorkerContext, work: Work, fold: int, outcome: Any, error: str | None) -> None:
    """The probe's table over the fold's row (``metrics``), the BN-only γ as a gamma_stats row, then finalise."""
    with ctx.db.session() as s:
        if not _end_fold(s, work, outcome, error):
            result = outcome.to_dict()
            gamma_after = result["bn_only"].pop("gamma", None)
            written = s.execute(
                update(AlchemyResult)
                .where(*_mine(work))
                .values(
                    status="ok",
                    dice={"score": outcome.dice_unclipped, "per_class": outcome.dice_per_class_unclipped},
                    metrics={"probe": result},
                    progress=1.0,
                    seconds=work.seconds,
                    error=None,
                    finished_at=utcnow(),
                )
            ).rowcount
            if written == 1:
                s.execute(delete(GammaStat).where(GammaStat.job_id == work.job_id, GammaStat.fold == fold))
                s.add_all(_gamma_rows(work, {"after_bn": gamma_after}, ctx.settings.gamma_threshold, fold=fold))
        s.flush()
        finalise(s, work.job_id)


def run_probe_fold(ctx: WorkerContext, job_id: str, fold: int) -> str:
    work = claim_fold(ctx, job_id, fold)
    if work is None:
        return "skipped"
    log.info("γ-clipping probe on %s (job %s)", work.name, job_id)
    outcome, error = _run_fold(ctx, work, fold, lambda reporter: _probe(ctx, work, fold, reporter), "probe")
    save_probe(ctx, work, fold, outcome, error)
    status = "failed" if error else ("cancelled" if outcome is None else "ok")
    log.info("%s: %s", work.name, status if not error else f"{status}: {error}")
    return status


# --------------------------------------------------------------------------------------------- celery


_sweeper: Sweeper | None = None


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    """Start the recovery sweep in the worker's main process, then tell a parent that started this worker
    (service.launcher) that it now consumes from the queue."""
    global _sweeper
    settings = get_settings()
    db = Database(settings, pool_size=1)
    _sweeper = Sweeper(db, app, settings, BrokerProbe(settings, app).pending_task_ids).start()
    ready_file = os.environ.get(READY_FILE_ENV)
    if ready_file:
        Path(ready_file).touch()


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    """Warm shutdown (SIGTERM): Celery finishes the tasks in flight; the sweep stops now."""
    if _sweeper is not None:
        _sweeper.stop()


@app.task(name=TASK_RANK_ENTRY, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def rank_entry(job_id: str, entry_id: str) -> str:
    with job_context(job_id, entry_id=entry_id):
        return run_rank_entry(context(), job_id, entry_id)


@app.task(name=TASK_ALCHEMY, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def alchemy_fold(job_id: str, fold: int) -> str:
    with job_context(job_id, fold=str(fold)):
        return run_alchemy_fold(context(), job_id, fold)


@app.task(name=TASK_PROBE, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def probe_fold(job_id: str, fold: int) -> str:
    with job_context(job_id, fold=str(fold)):
        return run_probe_fold(context(), job_id, fold)
