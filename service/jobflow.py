"""The job state machine, shared by the API (create, cancel) and the worker (claim, finish, finalise).

A ranking is a job row plus one entry row per candidate (and per random-init control); one Celery task
runs each entry. Nothing waits for the group as a whole: whichever task finishes the *last* entry orders
the entries and closes the job. That needs no result backend and no chord, and it survives redelivery:

- state changes are conditional updates (``... WHERE status IN (...)``), so two deliveries of one task,
  or a task and a cancel, cannot both win;
- entries are unique per (job, slot) and results are written over the row, never appended;
- every task commits its entry before it looks at the others, so the last one to commit always sees all
  of them finished and finalises; the job's own conditional update makes finalising happen once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bnrank.engine.ranking import RankEntry, order_entries, stability
from bnrank.engine.training import TrainConfig
from service.models import (
    TERMINAL_ENTRY_STATUSES,
    TERMINAL_JOB_STATUSES,
    Checkpoint,
    Job,
    RankingEntry,
    utcnow,
)

ACTIVE_JOB = ("queued", "running")


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


def job_progress(session: Session, job_id: str) -> float:
    value = session.scalar(select(func.avg(RankingEntry.progress)).where(RankingEntry.job_id == job_id))
    return float(value or 0.0)


def request_cancel(session: Session, job: Job) -> None:
    """Ask a job to stop: queued work is cancelled at once, running work at its next progress report."""
    now = utcnow()
    job.cancel_requested = True
    job.updated_at = now
    if job.status == "queued" and job.kind != "ranking":
        session.execute(
            update(Job).where(Job.id == job.id, Job.status == "queued").values(status="cancelled", finished_at=now)
        )
    session.execute(
        update(RankingEntry)
        .where(RankingEntry.job_id == job.id, RankingEntry.status == "queued")
        .values(status="cancelled", finished_at=now, progress=1.0)
    )
    session.flush()
    if job.kind == "ranking":
        finalise_ranking(session, job.id)
    session.refresh(job)


def finalise_ranking(session: Session, job_id: str) -> bool:
    """Order the entries and close the job, if every entry is finished and nobody closed it yet.

    Runs inside the caller's transaction; returns whether this call closed the job.
    """
    entries = list(
        session.scalars(select(RankingEntry).where(RankingEntry.job_id == job_id).order_by(RankingEntry.position))
    )
    if not entries or any(e.status not in TERMINAL_ENTRY_STATUSES for e in entries):
        return False
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL_JOB_STATUSES:
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

    candidates_ok = [e for e in entries if e.status == "ok" and not e.is_control]
    if job.cancel_requested:
        status, error = "cancelled", None
    elif candidates_ok:
        status, error = "succeeded", None
    else:
        status = "failed"
        reasons = "; ".join(f"{e.name}: {e.error}" for e in entries if e.status == "failed" and not e.is_control)
        error = f"no candidate could be evaluated ({reasons or 'all were cancelled'})"[:4000]

    now = utcnow()
    closed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE_JOB))
        .values(
            status=status,
            error=error,
            result=result,
            progress=1.0,
            message=f"ranking {status}",
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if closed != 1:
        return False
    ranks = {e.checkpoint: e.rank for e in ordered}
    for e in entries:
        e.rank = ranks.get(e.id)
    session.flush()
    return True
