"""The job state machine, shared by the API (cancel) and the worker (claim, finish, finalise).

A ranking is a job row plus one entry row per candidate (and per random-init control); an alchemy job is a
job row plus one result row per fold. One Celery task runs each row. Nothing waits for the group as a
whole: whichever task finishes the *last* row closes the job (for a ranking: orders the entries). That
needs no result backend and no chord, and it survives redelivery:

- state changes are conditional updates (``... WHERE status IN (...)``), so two deliveries of one task,
  or a task and a cancel, cannot both win;
- rows are unique per (job, slot) or (job, fold) and results are written over them, never appended;
- every task commits its row before it looks at the others, so the last one to commit always sees all
  of them finished and finalises; the job's own conditional update makes finalising happen once.

A ranking with successive halving (``ranking.halving_rounds`` > 1) runs one task per candidate and round:
``ranking_entries.halving_round`` says which round a row is run for. When every row is finished and rounds
are left, finalising moves the survivors (the engine's `halving_survivors` over the scores at the round's
end) to the next round instead of closing: one conditional update per survivor (only one caller wins), fresh
task ids, and the messages go to the caller's ``outbox`` to be sent after its commit. A caller without an
outbox leaves the rows undispatched, and the recovery sweep sends them on its next pass; a worker killed
mid-round is recovered like any other (the re-sent task reads the round from the row and runs it again).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bnrank.engine.configs.ranking import RankConfig, ranking_config
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.ranking import halving_steps, halving_survivors, order_entries, stability, tie_guidance
from service.core.errors import Conflict
from service.core.jobs import Message, task_message
from service.core.models import TERMINAL_ENTRY_STATUSES, TERMINAL_JOB_STATUSES, AlchemyResult, Job, RankingEntry, utcnow
from service.core.owned import owned_job
from service.core.params import RankingParams, read_params
from service.core.results import rank_entry

ACTIVE_JOB = ("queued", "running")


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


def cancel_job(session: Session, owner: str, job_id: str) -> Job:
    """The owner's request to cancel a job; Conflict once it has ended."""
    job = owned_job(session, owner, job_id)
    if job.status in TERMINAL_JOB_STATUSES:
        raise Conflict(f"job {job_id!r} already ended: {job.status}")
    request_cancel(session, job)
    session.commit()
    return job


def list_jobs(
    session: Session, owner: str, limit: int, offset: int, status: str | None, kind: str | None
) -> tuple[list[Job], int]:
    """A page of the owner's jobs (newest first), optionally of one status or kind, and the total."""
    where = [Job.owner == owner]
    if status:
        where.append(Job.status == status)
    if kind:
        where.append(Job.kind == kind)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    )
    return list(rows), total


def job_snapshot(session: Session, owner: str, job_id: str) -> dict[str, Any] | None:
    """What a progress event carries: the job's state and each unit of work's (candidates, or folds);
    None when the owner has no such job."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).first()
    if job is None:
        return None
    if job.kind == "ranking":
        label, order = RankingEntry.name, RankingEntry.position
        work = select(label, RankingEntry.status, RankingEntry.progress).where(RankingEntry.job_id == job_id)
    else:
        label, order = AlchemyResult.fold, AlchemyResult.fold
        work = select(label, AlchemyResult.status, AlchemyResult.progress).where(AlchemyResult.job_id == job_id)
    rows = session.execute(work.order_by(order)).all()
    return {
        "id": job.id,
        "status": job.status,
        "progress": round(job.progress, 4),
        "message": job.message,
        "error": job.error,
        "entries": [
            {"name": name if job.kind == "ranking" else f"fold {name}", "status": s, "progress": round(p, 4)}
            for name, s, p in rows
        ],
    }


def finalise(session: Session, job_id: str, outbox: list[Message] | None = None) -> bool:
    """Close the job if all its work is finished and nobody closed it yet (see the module docstring).

    A ranking with halving rounds left dispatches its next round instead; its messages are appended to
    ``outbox`` for the caller to send once its transaction has committed.
    """
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL_JOB_STATUSES:
        return False
    return finalise_ranking(session, job, outbox) if job.kind == "ranking" else finalise_folds(session, job)


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


def _ranking_configs(job: Job) -> tuple[TrainConfig, RankConfig]:
    """The job's ranking budget and options; the ranking defaults where its params cannot be read."""
    try:
        params = read_params(job.kind, job.params)
        assert isinstance(params, RankingParams)
        return params.train_config(), params.rank_config()
    except ValueError:  # pydantic's ValidationError is one; a job's params were checked when it was created
        return ranking_config(), RankConfig()


def _round(entry: RankingEntry) -> int:
    return entry.halving_round or 1


def advance_halving(
    session: Session, job: Job, entries: Sequence[RankingEntry], ends: Sequence[int], eta: int, outbox: list | None
) -> bool:
    """Send the survivors of the finished round on to the next one; False when no round is left to run.

    ``entries`` are all of the job's rows (every one finished), in position order, so ties at the cut keep the
    engine's order (candidates, then controls). Rows that stop here are complete (progress 1).
    """
    current = max(_round(e) for e in entries)
    alive = [e for e in entries if e.status == "ok" and _round(e) == current]
    if job.cancel_requested or current >= len(ends) or not alive:
        return False
    keep = {alive[i].id for i in halving_survivors([e.score or 0.0 for e in alive], eta)}
    now = utcnow()
    sent: list[Message] = []
    for e in (e for e in alive if e.id in keep):
        task_id = str(uuid.uuid4())
        won = session.execute(
            update(RankingEntry)
            .where(
                RankingEntry.id == e.id,
                RankingEntry.status == "ok",
                func.coalesce(RankingEntry.halving_round, 1) == current,
            )
            .values(
                status="queued",
                halving_round=current + 1,
                task_id=task_id,
                dispatched_at=now if outbox is not None else None,  # None: the recovery sweep sends it
                finished_at=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if won != 1:
            return True  # another caller advanced this round (its update went first)
        name, args = task_message(job, e)
        sent.append((task_id, name, args))
    stopped = [e.id for e in alive if e.id not in keep]
    if stopped:
        session.execute(
            update(RankingEntry)
            .where(RankingEntry.id.in_(stopped))
            .values(progress=1.0)
            .execution_options(synchronize_session=False)
        )
    job.task_ids = [*(job.task_ids or []), *(m[0] for m in sent)]
    job.message = f"halving round {current + 1} of {len(ends)}: {len(sent)} candidate(s) to {ends[current]} steps"
    job.updated_at = now
    if outbox is not None:
        outbox.extend(sent)
    for e in entries:  # the rows were changed underneath the session's copies
        session.expire(e)
    return True


def halving_summary(entries: Sequence[RankingEntry], ends: Sequence[int], eta: int, max_steps: int) -> dict[str, Any]:
    """What the engine's ``RankingResult.halving`` says, for a served ranking: each round's candidates, and the
    steps spent, where every round re-trains from step 0 (one task per candidate and round)."""
    reached = [e for e in entries if e.halving_round is not None]
    rounds = [
        {
            "round": k + 1,
            "steps": end,
            "candidates": [e.name for e in reached if _round(e) > k + 1 or (_round(e) == k + 1 and e.status == "ok")],
        }
        for k, end in enumerate(ends)
    ]
    return {
        "rounds": rounds,
        "eta": eta,
        "state": "each round re-trains its candidates from step 0 to the round's end (one task per candidate and "
        "round, nothing carried between processes); the scores equal those of the engine's continued runs",
        "candidate_steps": sum(sum(ends[: _round(e)]) for e in reached),
        "candidate_steps_without_halving": max_steps * len(reached),
    }


def finalise_ranking(session: Session, job: Job, outbox: list[Message] | None = None) -> bool:
    """Order the entries and close the job, if every entry is finished and no halving round is left to run.
    Runs in the caller's transaction."""
    entries = list(
        session.scalars(select(RankingEntry).where(RankingEntry.job_id == job.id).order_by(RankingEntry.position))
    )
    if not entries or any(e.status not in TERMINAL_ENTRY_STATUSES for e in entries):
        return False
    config, rank = _ranking_configs(job)
    ends = halving_steps(config.max_steps, rank.halving_rounds, rank.halving_eta)
    if len(ends) > 1 and advance_halving(session, job, entries, ends, rank.halving_eta, outbox):
        return False
    ordered = order_entries([rank_entry(e) for e in entries])
    window = config.score_window
    result: dict[str, Any] = {
        "stability": stability(ordered, window),
        "ranked": [e.checkpoint for e in ordered if e.rank],
    }
    if len(ends) > 1:
        result["halving"] = halving_summary(entries, ends, rank.halving_eta, config.max_steps)
    # Tie guidance from the stored curves (the spread of the last validations; rows keep no per-case scores),
    # with the job's tie options, so a served ranking says what `bnrank rank` says: who rank 1 is tied with.
    result["ties"] = tie_guidance(ordered, rank.tie_resamples, rank.tie_confidence, window)
    result["entry_ties"] = {
        e.checkpoint: {"tie_group": e.tie_group, "p_best": e.p_best, "tied_with": e.tied_with} for e in ordered
    }

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
