"""The job state machine, shared by the API (create, cancel) and the worker (claim, finish, finalise).

A ranking is a job row plus one entry row per candidate (and per random-init control); an alchemy job is a
job row plus one result row per fold. One Celery task runs each row. Nothing waits for the group as a
whole: whichever task finishes the *last* row closes the job (for a ranking: orders the entries). That
needs no result backend and no chord, and it survives redelivery:

- state changes are conditional updates (``... WHERE status IN (...)``), so two deliveries of one task,
  or a task and a cancel, cannot both win;
- rows are unique per (job, slot) or (job, fold) and results are written over them, never appended;
- every task commits its row before it looks at the others, so the last one to commit always sees all
  of them finished and finalises; the job's own conditional update makes finalising happen once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bnrank.engine.ranking import RankEntry, order_entries, stability
from bnrank.engine.training import TrainConfig
from service.models import (
    TERMINAL_ENTRY_STATUSES,
    TERMINAL_JOB_STATUSES,
    AlchemyResult,
    Checkpoint,
    Job,
    RankingEntry,
    utcnow,
)

ACTIVE_JOB = ("queued", "running")

# Celery task names, by job kind. The API sends tasks by name and never imports the worker's task module.
TASK_RANK_ENTRY = "bnrank.rank_entry"
TASK_ALCHEMY = "bnrank.alchemy"
TASK_PROBE = "bnrank.probe"
JOB_TASKS = {"ranking": TASK_RANK_ENTRY, "alchemy": TASK_ALCHEMY, "probe": TASK_PROBE}

WorkRow = RankingEntry | AlchemyResult


def task_message(job: Job, row: WorkRow) -> tuple[str, list[Any]]:
    """The task that runs one unit of work, and its arguments: (job, entry) or (job, fold)."""
    if isinstance(row, RankingEntry):
        return JOB_TASKS[job.kind], [job.id, row.id]
    return JOB_TASKS[job.kind], [job.id, row.fold]


def stamp_dispatch(job: Job, row: WorkRow) -> str:
    """Give the row a fresh task id (recorded on the job too) just before its message is sent."""
    task_id = str(uuid.uuid4())
    row.task_id = task_id
    row.dispatched_at = utcnow()
    job.task_ids = [*(job.task_ids or []), task_id]
    return task_id


def train_config(params: dict[str, Any], device: str = "cpu") -> TrainConfig:
    """The engine config a job's stored params describe (raises ValueError on an invalid budget)."""
    budget = dict(params.get("budget") or {})
    return TrainConfig(**budget, seed=int(params.get("seed", 0)), device=device)


def _control_key(ckpt: Checkpoint) -> tuple[str, dict[str, Any], str]:
    """Checkpoints that share architecture and build options share one random-init control."""
    kwargs = {k: v for k, v in (ckpt.build_kwargs or {}).items() if k not in ("in_channels", "out_channels")}
    key = json.dumps([ckpt.architecture, kwargs, ckpt.network_def], sort_keys=True, default=str)
    return ckpt.architecture, kwargs, hashlib.sha256(key.encode()).hexdigest()[:20]


def ranking_entries(checkpoints: Sequence[Checkpoint], control: bool) -> list[RankingEntry]:
    """Entry rows for the candidates, then one control per distinct architecture configuration."""
    entries = [
        RankingEntry(
            checkpoint_id=c.id,
            slot=c.id,
            position=i,
            name=c.name,
            architecture=c.architecture,
            build_kwargs=dict(c.build_kwargs or {}),
            network_def=c.network_def,
        )
        for i, c in enumerate(checkpoints)
    ]
    if not control:
        return entries
    groups: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]] = {}
    for c in checkpoints:
        arch, kwargs, digest = _control_key(c)
        groups.setdefault(digest, (arch, kwargs, c.network_def))
    per_arch: dict[str, int] = {}
    for arch, _, _ in groups.values():
        per_arch[arch] = per_arch.get(arch, 0) + 1
    for digest, (arch, kwargs, network_def) in groups.items():
        name = f"control: random init ({arch})"
        if per_arch[arch] > 1:  # same family at several sizes: say which control is which
            name = f"control: random init ({arch} {json.dumps(kwargs, sort_keys=True)})"
        entries.append(
            RankingEntry(
                checkpoint_id=None,
                slot=f"control:{digest}",
                position=len(entries),
                name=name[:300],
                is_control=True,
                architecture=arch,
                build_kwargs=kwargs,
                network_def=network_def,
            )
        )
    return entries


def work_rows(kind: str) -> type[RankingEntry] | type[AlchemyResult]:
    """The table holding a job's units of work: one row per candidate, or one per alchemy/probe fold."""
    return RankingEntry if kind == "ranking" else AlchemyResult


def job_progress(session: Session, job_id: str, rows: type[RankingEntry] | type[AlchemyResult]) -> float:
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


def finalise(session: Session, job_id: str) -> bool:
    """Close the job if all its work is finished and nobody closed it yet (see the module docstring)."""
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL_JOB_STATUSES:
        return False
    return finalise_ranking(session, job) if job.kind == "ranking" else finalise_folds(session, job)


def _close(session: Session, job: Job, status: str, error: str | None, result: dict[str, Any]) -> bool:
    """The one conditional update that ends a job; only one caller can win it."""
    now = utcnow()
    closed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_(ACTIVE_JOB))
        .values(
            status=status,
            error=error,
            result=result,
            progress=1.0,
            message=f"{job.kind} {status}",
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    return closed == 1


def finalise_ranking(session: Session, job: Job) -> bool:
    """Order the entries and close the job, if every entry is finished. Runs in the caller's transaction."""
    entries = list(
        session.scalars(select(RankingEntry).where(RankingEntry.job_id == job.id).order_by(RankingEntry.position))
    )
    if not entries or any(e.status not in TERMINAL_ENTRY_STATUSES for e in entries):
        return False
    engine_entries = [
        RankEntry(
            checkpoint=e.id,
            status="ok" if e.status == "ok" else "failed",
            score=e.score,
            curve=list(e.curve or []),
            steps=e.steps,
            is_control=e.is_control,
        )
        for e in entries
    ]
    ordered = order_entries(engine_entries)
    try:
        window = train_config(job.params).score_window
    except (TypeError, ValueError):
        window = TrainConfig().score_window
    result = {"stability": stability(ordered, window), "ranked": [e.checkpoint for e in ordered if e.rank]}

    if job.cancel_requested:
        status, error = "cancelled", None
    elif any(e.status == "ok" and not e.is_control for e in entries):
        status, error = "succeeded", None
    else:
        status = "failed"
        reasons = "; ".join(f"{e.name}: {e.error}" for e in entries if e.status == "failed" and not e.is_control)
        error = f"no candidate could be evaluated ({reasons or 'all were cancelled'})"[:4000]
    if not _close(session, job, status, error, result):
        return False
    ranks = {e.checkpoint: e.rank for e in ordered}
    for e in entries:
        e.rank = ranks.get(e.id)
    session.flush()
    return True


def finalise_folds(session: Session, job: Job) -> bool:
    """Close an alchemy or probe job once every fold is finished: succeeded only if every fold succeeded."""
    folds = list(session.scalars(select(AlchemyResult).where(AlchemyResult.job_id == job.id)))
    if not folds or any(f.status not in TERMINAL_ENTRY_STATUSES for f in folds):
        return False
    scores = [float(f.dice["score"]) for f in folds if f.status == "ok" and "score" in f.dice]
    result: dict[str, Any] = {"dice_per_fold": [f.dice.get("score") for f in sorted(folds, key=lambda f: f.fold)]}
    if scores:
        mean = sum(scores) / len(scores)
        var = sum((s - mean) ** 2 for s in scores) / (len(scores) - 1) if len(scores) > 1 else 0.0
        result.update(dice_mean=mean, dice_std=var**0.5)
    if job.cancel_requested:
        status, error = "cancelled", None
    elif all(f.status == "ok" for f in folds):
        status, error = "succeeded", None
    else:
        status = "failed"
        error = "; ".join(f"fold {f.fold}: {f.error}" for f in folds if f.status == "failed")[:4000] or None
    return _close(session, job, status, error, result)
