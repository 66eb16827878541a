"""The ``ranking`` kind: norm-only evaluation of candidates on one dataset, one task per candidate (and round).

Closing a ranking is the engine's close-out (`bnrank.engine.ranking.close_ranking`: order, stability, tie groups
with the ranking's seed) over the stored entries, so a served ranking says what `bnrank rank` says. With
successive halving (``ranking.halving_rounds`` > 1) a round whose rows have all finished sends its survivors (the
engine's `halving_survivors` over the scores at the round's end) on to the next round instead of closing: one
conditional update per survivor (only one caller wins), fresh task ids, and the messages go to the caller's
``outbox`` to be sent after its commit. A caller without an outbox leaves the rows undispatched, and the recovery
sweep sends them on its next pass.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bnrank.engine.cascade import (
    apply_answer,
    close_round,
    costs,
    may_run,
    race_ends,
    race_seeds,
    rank_order,
    stage_one,
    start_race,
    summary,
    verdict,
)
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankEntry
from bnrank.engine.halving import halving_steps, halving_summary, halving_survivors
from bnrank.engine.ranking import close_ranking
from service.core.kinds.base import JobKind, Message, close_job
from service.core.models import TERMINAL_ENTRY_STATUSES, Job, RankingEntry, new_id, utcnow
from service.core.params import RankingParams
from service.core.results import rank_entry

log = logging.getLogger(__name__)

RACE_TASK = "bnrank.race_entry"
"""The task of a cascade's race row (a fine-tuning run): the ranking's unit of work under a name of its own, routed
as ranking work (service/core/queues.py: the GPU queue while a GPU worker is there); the recovery sweep re-sends it
as an ordinary ranking task."""


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
        name, args = KIND.message(job, e)
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


def finalise_ranking(session: Session, job: Job, outbox: list[Message] | None = None) -> bool:
    """Order the entries and close the job, if every entry is finished and no halving round is left to run.
    Runs in the caller's transaction."""
    entries = list(
        session.scalars(select(RankingEntry).where(RankingEntry.job_id == job.id).order_by(RankingEntry.position))
    )
    if not entries or any(e.status not in TERMINAL_ENTRY_STATUSES for e in entries):
        return False
    params = ranking_params(job.params)
    config, rank = params.train_config(), params.rank_config()
    if rank.strategy == "cascade":
        return finalise_cascade(session, job, entries, config, rank, outbox)
    ends = halving_steps(config.max_steps, rank.halving_rounds, rank.halving_eta)
    if len(ends) > 1 and advance_halving(session, job, entries, ends, rank.halving_eta, outbox):
        return False
    # The engine's close-out, as `bnrank rank` runs it: order, stability and tie guidance with the ranking's seed,
    # over the per-case scores each row keeps (rows from before 0008 have none: the spread of the last validations).
    ordered, closed = close_ranking([rank_entry(e) for e in entries], config, rank)
    result: dict[str, Any] = {"stability": closed["stability"], "ranked": [e.checkpoint for e in ordered if e.rank]}
    if len(ends) > 1:
        named = [replace(rank_entry(e), checkpoint=e.name) for e in entries]
        result["halving"] = halving_summary(named, ends, rank.halving_eta, config.max_steps, retrained=True)
    result["ties"] = closed["ties"]
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
    if not close_job(session, job, status, error, result):
        return False
    ranks = {e.checkpoint: e.rank for e in ordered}
    for e in entries:
        e.rank = ranks.get(e.id)
    session.flush()
    return True


def _named(row: RankingEntry) -> RankEntry:
    """A stored row as the engine's entry under its display name (the cascade's rows and verdict name candidates)."""
    return replace(rank_entry(row), checkpoint=row.name, architecture=row.architecture, error=row.error)


def finalise_cascade(
    session: Session,
    job: Job,
    entries: Sequence[RankingEntry],
    config: TrainConfig,
    rank: RankConfig,
    outbox: list[Message] | None,
) -> bool:
    """A cascade's close-out from its rows, with the engine's pieces (bnrank/engine/cascade.py): replay the
    norm-only stage and every finished race round; dispatch the next round if the stop rule and the budget cap
    let it run, else close with the verdict. Each race round is one task per racer and seed, re-trained from step
    0 (reported as ``retraining_seconds``), sent as :data:`RACE_TASK` (GPU workers first, service/core/queues.py).
    The cap is held in the rows' measured seconds against the controls' calibrated step cost, as the engine holds it."""
    candidates = [e for e in entries if e.stage is None and not e.is_control]
    controls: dict[str, list[RankEntry]] = {}
    bases: dict[str, str] = {}
    for e in entries:
        if e.stage is None and e.is_control and e.group_key:
            base = e.name.rsplit(" seed ", 1)[0]
            bases[e.group_key] = base
            controls.setdefault(base, []).append(_named(e))
    member = [bases.get(e.group_key or "") for e in candidates]
    named = [_named(e) for e in candidates]
    stage = stage_one(named, member, controls, rank)
    first = [e for e in entries if e.stage is None]
    spent = sum(e.seconds or 0.0 for e in first)
    race = start_race(stage, spent, sum(e.steps for e in first), costs(stage, controls, rank))
    racing = [e for e in entries if e.stage == "race"]
    index = {e.checkpoint_id: i for i, e in enumerate(candidates)}
    k = 0
    while may_run(race, stage, rank, k):
        rows = [e for e in racing if e.halving_round == k + 1]
        if not rows:
            if job.cancel_requested:
                break
            _dispatch_round(session, job, [candidates[i] for i in race.alive], config, rank, k, outbox)
            return False
        runs: dict[int, list[RankEntry]] = {}
        for e in sorted(rows, key=lambda e: e.seed or 0):
            runs.setdefault(index[e.checkpoint_id], []).append(_named(e))
        close_round(race, stage, rank, k, runs, config.seed, retrained=True)
        k += 1
    answer = verdict(stage, race, rank, named, member, controls, config.seed)
    ordered = apply_answer(named, stage, answer)
    cascade, stability, ties = summary(stage, race, answer, rank, len(candidates), {}, config)
    order = [candidates[i] for i in rank_order(stage)]
    result: dict[str, Any] = {
        "stability": stability,
        "ranked": [e.id for e in order],
        "ties": ties,
        "cascade": cascade,
        "entry_ties": {
            c.id: {"tie_group": e.tie_group, "p_best": e.p_best, "tied_with": e.tied_with}
            for c, e in zip(order, ordered, strict=False)
        },
    }
    if job.cancel_requested:
        status, error = "cancelled", None
    elif order:
        status, error = "succeeded", None
    else:
        status = "failed"
        reasons = "; ".join(f"{e.name}: {e.error}" for e in candidates if e.status == "failed")
        error = f"no candidate could be evaluated ({reasons or 'all were cancelled'})"[:4000]
    if not close_job(session, job, status, error, result):
        return False
    for n, c in enumerate(order, start=1):
        c.rank = n
    session.flush()
    return True


def _dispatch_round(
    session: Session,
    job: Job,
    racers: Sequence[RankingEntry],
    config: TrainConfig,
    rank: RankConfig,
    k: int,
    outbox: list[Message] | None,
) -> bool:
    """Insert one race row per racer and seed for round ``k`` (0-based) and queue their tasks; False when another
    caller inserted them first (the rows' unique slot)."""
    now = utcnow()
    rows = []
    position = 1 + max(e.position for e in job.entries)
    for racer in racers:
        for seed in race_seeds(config, rank):
            rows.append(
                RankingEntry(
                    id=new_id("re"),
                    job_id=job.id,
                    checkpoint_id=racer.checkpoint_id,
                    slot=f"race:{racer.checkpoint_id}:seed{seed}:round{k + 1}",
                    position=position + len(rows),
                    name=racer.name,
                    architecture=racer.architecture,
                    build_kwargs=dict(racer.build_kwargs or {}),
                    network_def=racer.network_def,
                    stage="race",
                    seed=seed,
                    group_key=racer.group_key,
                    halving_round=k + 1,
                    task_id=str(uuid.uuid4()),
                    dispatched_at=now if outbox is not None else None,  # None: the recovery sweep sends it
                )
            )
    try:
        with session.begin_nested():
            session.add_all(rows)
            session.flush()
    except IntegrityError:
        return False
    sent = [(row.task_id, RACE_TASK, KIND.message(job, row)[1]) for row in rows]
    job.task_ids = [*(job.task_ids or []), *(m[0] for m in sent)]
    job.message = (
        f"race round {k + 1}: {len(racers)} candidate(s) x {rank.race_seeds} seed(s) to {race_ends(rank)[k]} steps"
    )
    job.updated_at = now
    if outbox is not None:
        outbox.extend(sent)  # type: ignore[arg-type]
    return True


def ranking_params(stored: Mapping[str, Any] | None) -> RankingParams:
    """A ranking's stored params, or (unreadable: logged) a ranking request's defaults."""
    try:
        params = KIND.read(stored)
    except ValueError as exc:  # pydantic's ValidationError is one
        log.error("a ranking's stored params cannot be read (its defaults are used): %s", exc)
        return RankingParams()
    assert isinstance(params, RankingParams)
    return params


KIND = JobKind(
    name="ranking",
    path="/v1/rankings",
    page="rankings",
    task="bnrank.rank_entry",
    task_label="rank_entry",
    params=RankingParams,
    rows=RankingEntry,
    relation="entries",
    unit="id",
    unit_label="name",
    unit_order="position",
    finalise=finalise_ranking,
)
