"""Celery tasks: each evaluates one ranking entry with the engine and writes the outcome to its row.

The Celery functions are thin; the work is in plain functions taking a `WorkerContext`, so tests can run
a task body in-process against the same database to check what a redelivery does.

A task never raises for a candidate's problem (bad file, NaN loss, dataset changed): the entry is marked
failed with the reason, and the ranking goes on with the others. Cancel is cooperative: a reporter thread
writes progress every few seconds and reads the job's cancel flag; the engine's progress callback then
raises `Cancelled` at the next step it reports.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.signals import worker_ready
from sqlalchemy import delete, select, update

from bnrank.engine.data import PreprocessConfig, compute_fingerprint, open_dataset, preprocess
from bnrank.engine.errors import BNRankError, DatasetError
from bnrank.engine.ranking import Candidate, RankEntry, evaluate_candidate
from bnrank.engine.task import make_task
from bnrank.engine.threads import configure_threads
from bnrank.engine.training import TaskData
from service.blobs import BlobStore
from service.config import Settings, get_settings
from service.db import Database
from service.jobflow import finalise_ranking, job_progress, train_config
from service.launcher import READY_FILE_ENV
from service.models import (
    TERMINAL_ENTRY_STATUSES,
    TERMINAL_JOB_STATUSES,
    Checkpoint,
    Dataset,
    GammaStat,
    Job,
    RankingEntry,
    utcnow,
)
from service.paths import PathRefused, resolve_in_roots
from worker.celery_app import TASK_RANK_ENTRY, app

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
        self.threads = configure_threads(concurrent_jobs=settings.worker_concurrency)
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


class ProgressReporter:
    """Writes the latest progress to the database every few seconds from a side thread, and learns about
    cancellation there; the engine's callback only swaps a tuple and checks a flag, so it costs nothing."""

    def __init__(self, ctx: WorkerContext, job_id: str, entry_id: str) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.entry_id = entry_id
        self._latest: tuple[int, int, str] = (0, 1, "starting")
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress-{entry_id}", daemon=True)

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
                log.warning("progress of %s not written: %s", self.entry_id, exc)

    def flush(self) -> None:
        step, total, message = self._latest
        now = utcnow()
        with self.ctx.db.session() as s:
            s.execute(
                update(RankingEntry)
                .where(RankingEntry.id == self.entry_id, RankingEntry.status == "running")
                .values(progress=min(step / max(total, 1), 0.99))
            )
            s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "running")
                .values(progress=job_progress(s, self.job_id), message=message[:500], updated_at=now)
            )
            cancel, status = s.execute(select(Job.cancel_requested, Job.status).where(Job.id == self.job_id)).one()
        if cancel or status in TERMINAL_JOB_STATUSES:
            self._cancelled.set()


# ------------------------------------------------------------------------------------------- ranking


@dataclass
class EntryWork:
    """What a task needs from the database, read once while claiming the entry."""

    job_id: str
    entry_id: str
    name: str
    params: dict[str, Any]
    dataset_id: str | None
    dataset_uri: str | None
    skip_cases: set[str]
    candidate: Candidate | None
    checkpoint_id: str | None
    problem: str | None = None


def _cancel_entry(s: Any, entry_id: str) -> None:
    s.execute(
        update(RankingEntry)
        .where(RankingEntry.id == entry_id, RankingEntry.status.in_(("queued", "running")))
        .values(status="cancelled", progress=1.0, finished_at=utcnow())
    )


def claim_entry(ctx: WorkerContext, job_id: str, entry_id: str) -> EntryWork | None:
    """Mark the entry running and read what it needs; None when there is nothing (left) to do."""
    with ctx.db.session() as s:
        entry = s.get(RankingEntry, entry_id)
        job = s.get(Job, job_id)
        if entry is None or job is None or entry.job_id != job_id:
            log.warning("task for unknown entry %s of job %s: skipped", entry_id, job_id)
            return None
        if entry.status in TERMINAL_ENTRY_STATUSES:  # a redelivery of finished work
            finalise_ranking(s, job_id)
            return None
        if job.status in TERMINAL_JOB_STATUSES or job.cancel_requested:
            _cancel_entry(s, entry_id)
            s.flush()
            finalise_ranking(s, job_id)
            return None
        now = utcnow()
        claimed = s.execute(
            update(RankingEntry)
            .where(RankingEntry.id == entry_id, RankingEntry.status.in_(("queued", "running")))
            .values(status="running", attempts=RankingEntry.attempts + 1, started_at=now, progress=0.0, error=None)
        ).rowcount
        if claimed != 1:
            return None
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="running", started_at=now, updated_at=now)
        )
        dataset = s.get(Dataset, job.dataset_id) if job.dataset_id else None
        work = EntryWork(
            job_id=job_id,
            entry_id=entry_id,
            name=entry.name,
            params=dict(job.params),
            dataset_id=job.dataset_id,
            dataset_uri=dataset.uri if dataset else None,
            skip_cases={p["case_id"] for p in (dataset.problems if dataset else [])},
            candidate=None,
            checkpoint_id=entry.checkpoint_id,
        )
        if entry.is_control:
            work.candidate = Candidate(
                name=entry.name,
                architecture=entry.architecture,
                network_def=entry.network_def,
                build_kwargs=dict(entry.build_kwargs or {}),
            )
        elif entry.checkpoint_id is None:
            work.problem = "the checkpoint was deleted before it could be evaluated"
        else:
            ckpt = s.get(Checkpoint, entry.checkpoint_id)
            assert ckpt is not None  # the foreign key sets checkpoint_id to NULL on delete
            work.candidate = Candidate(
                name=entry.name,
                path=ctx.blobs.path(ckpt.blob_path),
                architecture=None if ckpt.network_def else ckpt.architecture,
                network_def=ckpt.network_def,
            )
        if work.dataset_uri is None:
            work.problem = "the dataset of this job no longer exists"
        return work


def _evaluate(ctx: WorkerContext, work: EntryWork, reporter: ProgressReporter) -> RankEntry:
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


def save_outcome(ctx: WorkerContext, work: EntryWork, outcome: RankEntry | None) -> None:
    """Write the entry's result over its row (never a new row), then try to close the ranking."""
    now = utcnow()
    with ctx.db.session() as s:
        if outcome is None:  # cancelled
            _cancel_entry(s, work.entry_id)
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
                "finished_at": now,
            }
            if outcome.architecture:
                values["architecture"] = outcome.architecture
            written = s.execute(
                update(RankingEntry)
                .where(RankingEntry.id == work.entry_id, RankingEntry.status == "running")
                .values(**values)
            ).rowcount
            if written == 1:
                s.execute(delete(GammaStat).where(GammaStat.entry_id == work.entry_id))
                for phase, key in (("raw", "before"), ("after_bn", "after")):
                    stats = outcome.gamma.get(key)
                    if stats:
                        s.add(
                            GammaStat(
                                checkpoint_id=work.checkpoint_id,
                                dataset_id=work.dataset_id,
                                job_id=work.job_id,
                                entry_id=work.entry_id,
                                phase=phase,
                                threshold=float(stats["summary"].get("threshold", ctx.settings.gamma_threshold)),
                                summary=stats["summary"],
                                histogram=stats["histogram"],
                                layers=stats["layers"],
                            )
                        )
        s.flush()
        finalise_ranking(s, work.job_id)


def run_rank_entry(ctx: WorkerContext, job_id: str, entry_id: str) -> str:
    """Evaluate one entry; returns its final status (or 'skipped' when there was nothing to do)."""
    work = claim_entry(ctx, job_id, entry_id)
    if work is None:
        return "skipped"
    log.info("evaluating %s (job %s)", work.name, job_id)
    outcome: RankEntry | None
    with ProgressReporter(ctx, job_id, entry_id) as reporter:
        try:
            outcome = _evaluate(ctx, work, reporter)
        except Cancelled:
            outcome = None
        except Exception as exc:  # torch out of memory, a bug: still only this candidate fails
            log.exception("entry %s of job %s crashed", entry_id, job_id)
            outcome = RankEntry(checkpoint=work.name, status="failed", error=f"{type(exc).__name__}: {exc}")
    save_outcome(ctx, work, outcome)
    status = "cancelled" if outcome is None else outcome.status
    log.info("%s: %s", work.name, status if outcome is None or not outcome.error else f"{status}: {outcome.error}")
    return status


@worker_ready.connect
def _announce_ready(**_: Any) -> None:
    """Tell a parent that started this worker (service.launcher) that it now consumes from the queue."""
    ready_file = os.environ.get(READY_FILE_ENV)
    if ready_file:
        Path(ready_file).touch()


@app.task(name=TASK_RANK_ENTRY, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def rank_entry(job_id: str, entry_id: str) -> str:
    return run_rank_entry(context(), job_id, entry_id)
