"""Queries across jobs: which checkpoint did best on a dataset, and how one checkpoint did everywhere.

The design card stores every ranking entry "for querying"; these are the queries. A ranking entry counts
for a leaderboard when it was scored (status ``ok``), belongs to a candidate (not a random-init control)
whose checkpoint still exists, and its job is the owner's. Scores of different rankings were taken at the
budgets those rankings asked for, so every score travels with its job id, its steps and the score of the
random-init control of the same architecture in the same job: a user can see whether two scores are
comparable and whether pre-training beat random features there (thesis §3.1.1).

Pagination happens in the database (grouped by checkpoint, ordered by best score), so a dataset ranked a
thousand times costs one page of rows per request; migration 0005 adds the indexes these filters use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.models import Checkpoint, Dataset, Job, RankingEntry
from service.core.owned import owned_checkpoint, owned_dataset
from service.core.results import norm_view


@dataclass(frozen=True)
class ScoreRef:
    """One scored entry and the job it came from."""

    job_id: str
    entry_id: str
    job_status: str
    job_created_at: datetime
    finished_at: datetime | None
    score: float
    rank: int | None
    steps: int
    control_score: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _scored(owner: str) -> list[Any]:
    """The conditions under which an entry is a candidate's score in one of the owner's rankings."""
    return [
        Job.owner == owner,
        Job.kind == "ranking",
        RankingEntry.status == "ok",
        RankingEntry.is_control.is_(False),
        RankingEntry.checkpoint_id.is_not(None),
        RankingEntry.score.is_not(None),
        RankingEntry.stage.is_(None),  # a cascade's race rows are fine-tuning scores, not norm-only ones
    ]


def _control_scores(session: Session, job_ids: set[str]) -> dict[tuple[str, str | None], float]:
    """Score of each job's random-init control, by (job, architecture)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(RankingEntry.job_id, RankingEntry.architecture, RankingEntry.score).where(
            RankingEntry.job_id.in_(job_ids),
            RankingEntry.is_control.is_(True),
            RankingEntry.status == "ok",
            RankingEntry.score.is_not(None),
        )
    )
    return {(job_id, arch): float(score) for job_id, arch, score in rows}


def _ref(entry: RankingEntry, job: Job, controls: dict[tuple[str, str | None], float]) -> ScoreRef:
    assert entry.score is not None  # filtered by _scored
    return ScoreRef(
        job_id=job.id,
        entry_id=entry.id,
        job_status=job.status,
        job_created_at=job.created_at,
        finished_at=entry.finished_at,
        score=float(entry.score),
        rank=entry.rank,
        steps=entry.steps,
        control_score=controls.get((job.id, entry.architecture)),
    )


def leaderboard(
    session: Session, owner: str, dataset_id: str, limit: int, offset: int, architecture: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Each of the owner's checkpoints scored on the dataset: best and latest score with their jobs, best
    first; and how many checkpoints there are in all. NotFound when the owner has no such dataset."""
    dataset = owned_dataset(session, owner, dataset_id)
    where = [*_scored(owner), Job.dataset_id == dataset.id]
    if architecture:
        where.append(Checkpoint.architecture == architecture)
    best = func.max(RankingEntry.score).label("best")
    grouped = (
        select(RankingEntry.checkpoint_id, best, func.count(RankingEntry.id).label("runs"))
        .join(Job, Job.id == RankingEntry.job_id)
        .join(Checkpoint, Checkpoint.id == RankingEntry.checkpoint_id)
        .where(*where)
        .group_by(RankingEntry.checkpoint_id)
    )
    total = session.scalar(select(func.count()).select_from(grouped.subquery())) or 0
    page = session.execute(grouped.order_by(best.desc(), RankingEntry.checkpoint_id).limit(limit).offset(offset)).all()
    if not page:
        return [], total
    ids = [row.checkpoint_id for row in page]
    rows = session.execute(
        select(RankingEntry, Job, Checkpoint)
        .join(Job, Job.id == RankingEntry.job_id)
        .join(Checkpoint, Checkpoint.id == RankingEntry.checkpoint_id)
        .where(*where, RankingEntry.checkpoint_id.in_(ids))
    ).all()
    controls = _control_scores(session, {job.id for _, job, _ in rows})
    by_checkpoint: dict[str, list[tuple[RankingEntry, Job, Checkpoint]]] = {}
    for row in rows:
        by_checkpoint.setdefault(row[0].checkpoint_id, []).append(tuple(row))  # type: ignore[arg-type]
    items = []
    for group in page:
        found = by_checkpoint.get(group.checkpoint_id) or []
        if not found:  # deleted between the two reads
            continue
        top = max(found, key=lambda r: (r[0].score, -r[1].created_at.timestamp()))
        last = max(found, key=lambda r: (r[1].created_at, r[1].id))
        ckpt = found[0][2]
        items.append(
            {
                "checkpoint_id": ckpt.id,
                "name": ckpt.name,
                "architecture": ckpt.architecture,
                "runs": int(group.runs),
                "best": _ref(top[0], top[1], controls).as_dict(),
                "latest": _ref(last[0], last[1], controls).as_dict(),
            }
        )
    return items, total


def checkpoint_results(
    session: Session,
    owner: str,
    checkpoint_id: str,
    limit: int,
    offset: int,
    dataset_id: str | None = None,
    status: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Every ranking entry of one of the owner's checkpoints, newest job first, with its dataset and job;
    and the total. NotFound when the owner has no such checkpoint."""
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    where = [
        Job.owner == owner,
        Job.kind == "ranking",
        RankingEntry.checkpoint_id == ckpt.id,
        RankingEntry.stage.is_(None),  # norm-only results only: a cascade's race rows are fine-tuning runs
    ]
    if dataset_id:
        where.append(Job.dataset_id == dataset_id)
    if status:
        where.append(RankingEntry.status == status)
    base = select(RankingEntry.id).join(Job, Job.id == RankingEntry.job_id).where(*where)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    rows = session.execute(
        select(RankingEntry, Job, Dataset.name)
        .join(Job, Job.id == RankingEntry.job_id)
        .outerjoin(Dataset, Dataset.id == Job.dataset_id)
        .where(*where)
        .order_by(Job.created_at.desc(), Job.id, RankingEntry.id)
        .limit(limit)
        .offset(offset)
    ).all()
    controls = _control_scores(session, {job.id for _, job, _ in rows})
    items = [
        {
            "job_id": job.id,
            "job_status": job.status,
            "job_created_at": job.created_at,
            "dataset_id": job.dataset_id,
            "dataset_name": dataset_name,
            "entry_id": entry.id,
            "status": entry.status,
            "rank": entry.rank,
            "score": entry.score,
            "dice_per_class": dict(entry.dice_per_class or {}),
            "steps": entry.steps,
            "seconds": entry.seconds,
            "control_score": controls.get((job.id, entry.architecture)),
            "finished_at": entry.finished_at,
            "error": entry.error,
            "norm_kinds": norm_view(entry)["norm_kinds"],
        }
        for entry, job, dataset_name in rows
    ]
    return items, total
