"""Closing a job run once per fold (alchemy, probe): succeeded only if every fold succeeded."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.kinds.base import Message, close_job
from service.core.models import TERMINAL_ENTRY_STATUSES, Job


def fold_closer(rows: type[Any]) -> Any:
    """The `JobKind.finalise` of a kind whose folds live in ``rows``."""

    def finalise_folds(session: Session, job: Job, outbox: list[Message] | None = None) -> bool:
        """Close the job once every fold is finished, with the Dice over folds as its result."""
        folds = list(session.scalars(select(rows).where(rows.job_id == job.id)))
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
        return close_job(session, job, status, error, result)

    return finalise_folds
