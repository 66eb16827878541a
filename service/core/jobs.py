"""Submitting jobs: the rows a job is made of, and one broker message per row.

Used by the API when a job is created and by the recovery sweep when work must be re-sent. Every unit of
work (a ranking entry, an alchemy or probe fold) gets its own message, whose id is stamped on the row
before the send (`stamp_dispatch`), so the sweep can later ask the broker whether that exact message still
exists. Tasks are sent by name: nothing here (or in the API) imports the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr
from pydantic import ValidationError
from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.orm import Session

from bnrank.engine.alchemy import gamma_steps, no_own_affine_message
from bnrank.engine.budget_limits import check_step_memory
from bnrank.engine.cascade import control_seeds
from bnrank.engine.entries import RankEntry
from bnrank.engine.errors import BNRankError, LimitExceededError
from bnrank.engine.ranking import Candidate, control_candidates
from service.core.errors import Invalid, NotFound, Unavailable
from service.core.inserts import insert_job
from service.core.kinds import kind_of
from service.core.kinds.base import Message
from service.core.kinds.ranking import KIND as RANKING_KIND
from service.core.models import Checkpoint, Dataset, Job, RankingEntry, utcnow
from service.core.owned import owned_checkpoint, owned_dataset
from service.core.params import AlchemyParams, FoldParams, JobParams, RankingParams

log = logging.getLogger(__name__)

REPR_MAX = 1024  # Celery's argsrepr_maxsize
WorkRow = Any  # a row of a kind's table of units of work (service/core/kinds/)


def send_tasks(celery: Celery, queue: str, messages: Sequence[Message]) -> None:
    """Publish the messages over one broker connection; raises whatever kombu raises when it cannot.

    Where kombu can batch (5.7+: ``Producer.batch``, a Redis pipeline), the job's messages go to the
    broker in one round trip, and either all are flushed or, on an error, none; elsewhere one by one.

    Each message is built and sent by Celery's own protocol functions (``app.amqp``), the two halves of
    ``send_task`` without its per-call routing, task-registry and option merging (the queue is given, the
    tasks are not registered here): the same message on the wire at half the CPU (docs/benchmarks.md,
    issue 19). The queue is not re-declared per message: the default exchange delivers by queue name, and
    a queue's declaration is the consumer's (kombu's per-message check cost more than the rest of the send).
    """
    amqp = celery.amqp
    reply_to = celery.thread_oid
    with celery.producer_or_acquire() as producer:
        batch = producer.batch() if hasattr(producer, "batch") else contextlib.nullcontext()
        with batch:
            for task_id, name, args in messages:
                message = amqp.create_task_message(
                    task_id,
                    name,
                    args,
                    {},
                    reply_to=reply_to,
                    argsrepr=_argsrepr(args),
                    kwargsrepr="{}",
                    ignore_result=None,
                )
                amqp.send_task_message(producer, name, message, queue=queue, declare=[])


def _argsrepr(args: Sequence[Any]) -> str:
    """What Celery's ``saferepr`` writes for a task's arguments (ids: a plain ``repr``), at a tenth of the cost."""
    text = repr(args)
    return text if len(text) <= REPR_MAX else saferepr(args, REPR_MAX)


def task_message(job: Job, row: WorkRow) -> tuple[str, list[Any]]:
    """The task that runs one unit of work, and its arguments: (job, entry) or (job, fold)."""
    return kind_of(job.kind).message(job, row)


def stamp_dispatch(job: Job, row: WorkRow) -> str:
    """Give the row a fresh task id (recorded on the job too) just before its message is sent."""
    task_id = str(uuid.uuid4())
    row.task_id = task_id
    row.dispatched_at = utcnow()
    job.task_ids = [*(job.task_ids or []), task_id]
    return task_id


def check_params(params: JobParams, memory_bytes: int | None = None) -> None:
    """Invalid when the params do not make valid engine configs (the worker would only fail later), or
    when one training step of the budget would not fit in ``memory_bytes`` (a worker's memory; see
    `bnrank.engine.budget_limits` for the estimate and docs/deploy.md for the setting)."""
    try:
        params.check()
    except (BNRankError, ValueError, ValidationError) as exc:
        raise Invalid(str(exc) if isinstance(exc, BNRankError) else f"budget: {exc}") from exc
    if memory_bytes is not None:
        budget = params.budget  # type: ignore[attr-defined]
        try:
            check_step_memory(list(budget.patch_size), budget.batch_size, memory_bytes)
        except LimitExceededError as exc:
            raise Invalid(f"budget: {exc}") from exc


def _group_key(control: Candidate) -> str:
    key = json.dumps([control.architecture, control.build_kwargs, control.network_def], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def ranking_entries(
    checkpoints: Sequence[Any], control: bool, params: RankingParams | None = None
) -> list[RankingEntry]:
    """Entry rows for the candidates, then one random-init control per configuration, grouped and named by
    the engine's rule (`control_candidates`), exactly as a local `bnrank rank` adds them. Under the cascade
    strategy every control gets one row per control seed, and each candidate the key of its control group."""
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
    seen = [
        RankEntry(c.name, architecture=c.architecture, load_report={"build_kwargs": dict(c.build_kwargs or {})})
        for c in checkpoints
    ]
    candidates = [Candidate(c.name, architecture=c.architecture, network_def=c.network_def) for c in checkpoints]
    cascade = params is not None and params.rank_config().strategy == "cascade"
    seeds: list[int | None] = [None]
    if cascade:
        assert params is not None
        seeds = list(control_seeds(params.train_config(), params.rank_config()))
        for row, own in zip(entries, seen, strict=True):
            found = control_candidates([own], [candidates[row.position]])
            row.group_key = _group_key(found[0]) if found else None
    for control_of in control_candidates(seen, candidates):
        group = _group_key(control_of)
        for seed in seeds:
            entries.append(
                RankingEntry(
                    checkpoint_id=None,
                    slot=f"control:{group}" + (f":seed{seed}" if seed is not None else ""),
                    position=len(entries),
                    name=(control_of.name + (f" seed {seed}" if seed is not None else ""))[:300],
                    is_control=True,
                    architecture=str(control_of.architecture),
                    build_kwargs=control_of.build_kwargs,
                    network_def=dict(control_of.network_def) if control_of.network_def is not None else None,
                    seed=seed,
                    group_key=group if seed is not None else None,
                )
            )
    return entries


def check_folds(folds: int, dataset: Dataset) -> None:
    if folds > dataset.n_cases:
        raise Invalid(f"folds: {folds} folds need at least as many cases; the dataset has {dataset.n_cases}")


def submit(session: Session, celery: Celery, queue: str, job: Job) -> Job:
    """Commit the job with its rows and their task ids, then send one task per row.

    Ids are chosen before the commit so the rows are complete before any task can start. If the broker
    refuses, the job can never run: it is marked failed and Unavailable is raised.
    """
    # Ids and task ids are set here, not by the column defaults at flush: the rows then go to the database
    # complete in one INSERT each (a flush first and the task ids after cost an UPDATE per row).
    rows = kind_of(job.kind).units(job)
    for obj in (job, *rows):
        obj.id = obj.id or type(obj).__table__.c.id.default.arg(None)
    messages = []
    for row in rows:
        name, args = task_message(job, row)
        messages.append((stamp_dispatch(job, row), name, args))
    insert_job(session, job, rows)  # one statement for the job and its rows (service/core/inserts.py)
    session.commit()
    try:
        send_tasks(celery, queue, messages)
    except Exception as exc:  # kombu raises a zoo of connection errors
        log.error("cannot enqueue job %s: %s", job.id, exc)
        session.rollback()
        job.status, job.error, job.finished_at = "failed", f"could not be queued: broker unreachable ({exc})", utcnow()
        session.execute(
            update(Job).where(Job.id == job.id).values(status=job.status, error=job.error, finished_at=job.finished_at)
        )
        session.commit()
        raise Unavailable(f"the task broker is unreachable: {exc}") from exc
    return job


def ranking_candidates(session: Session, owner: str, dataset_id: str, checkpoint_ids: list[str]) -> list[Any]:
    """The owner's checkpoints in the order asked for (the columns an entry needs), in one round trip that
    also asks whether the dataset is the owner's; NotFound for the dataset, else naming every missing id.

    A submission is the API's most expensive request (docs/benchmarks.md, issue 14): two ORM lookups (the
    whole dataset row, every checkpoint column) were a fifth of its CPU time. The statements are built once
    (`_CANDIDATES`): building the ``IN`` clause anew cost 7 % of a submission (issue 19). They run on the
    session's connection (same transaction) rather than through ``Session.execute``, whose ORM layer
    (autoflush, ORM compile state, bind lookup) cost more than the statement's own execution; nothing is
    pending in the session here.
    """
    values = {"owner": owner, "dataset_id": dataset_id, "ids": list(checkpoint_ids)}
    connection = session.connection()
    rows = connection.execute(_CANDIDATES, values).all()
    if not (rows[0].dataset_owned if rows else connection.scalar(_DATASET_OWNED, values)):
        raise NotFound("dataset", dataset_id)
    found = {row.id: row for row in rows}
    missing = [c for c in checkpoint_ids if c not in found]
    if missing:
        raise NotFound("checkpoint", ", ".join(missing))
    return [found[c] for c in checkpoint_ids]


_DATASET_OWNED_CLAUSE = (
    exists().where(Dataset.id == bindparam("dataset_id"), Dataset.owner == bindparam("owner")).label("dataset_owned")
)
_DATASET_OWNED = select(_DATASET_OWNED_CLAUSE)
_CANDIDATES = select(
    Checkpoint.id,
    Checkpoint.name,
    Checkpoint.architecture,
    Checkpoint.build_kwargs,
    Checkpoint.network_def,
    _DATASET_OWNED_CLAUSE,
).where(Checkpoint.id.in_(bindparam("ids", expanding=True)), Checkpoint.owner == bindparam("owner"))


def submit_ranking(
    session: Session,
    celery: Celery,
    queue: str,
    owner: str,
    dataset_id: str,
    checkpoint_ids: list[str],
    params: RankingParams,
    *,
    max_candidates: int,
    memory_bytes: int | None = None,
) -> Job:
    """Queue a ranking of the owner's checkpoints on the owner's dataset (plus controls, if asked)."""
    if len(checkpoint_ids) > max_candidates:
        raise Invalid(f"checkpoint_ids: at most {max_candidates} candidates per ranking")
    check_params(params, memory_bytes)
    checkpoints = ranking_candidates(session, owner, dataset_id, checkpoint_ids)
    job = Job(owner=owner, kind=RANKING_KIND.name, dataset_id=dataset_id, params=params.model_dump(mode="json"))
    job.message = "queued"
    job.entries = ranking_entries(checkpoints, params.control, params)
    return submit(session, celery, queue, job)


def check_own_gamma(checkpoint: Checkpoint, params: AlchemyParams) -> None:
    """Refuse γ steps (identification, modification, R_γ) on a checkpoint with no γ of its own before queueing.

    Its upload counted the γ of its own normalisation affines (``n_bn_channels``, every kind); with none, the
    engine would refuse the run in the worker (norm-only ranking inserts affines for the evaluation, alchemy
    writes weights and inserts none). A network where only some norms lack an affine is refused by the engine.
    """
    steps = gamma_steps(params.alchemy_config())
    if steps and not checkpoint.n_bn_channels:
        detail = "its normalisation layers have no affine of their own (the upload found no γ)"
        raise Invalid(f"checkpoint {checkpoint.name}: " + no_own_affine_message(" and ".join(steps), detail))


def submit_folds(
    session: Session,
    celery: Celery,
    queue: str,
    owner: str,
    kind: str,
    dataset_id: str,
    params: FoldParams,
    *,
    memory_bytes: int | None = None,
) -> Job:
    """Queue an alchemy or probe job on one of the owner's checkpoints: one task per fold."""
    dataset = owned_dataset(session, owner, dataset_id)
    checkpoint = owned_checkpoint(session, owner, params.checkpoint_id)
    check_params(params, memory_bytes)
    check_folds(params.folds, dataset)
    if isinstance(params, AlchemyParams):
        check_own_gamma(checkpoint, params)
    job = Job(owner=owner, kind=kind, dataset_id=dataset.id, params=params.model_dump(mode="json"), message="queued")
    spec = kind_of(kind)
    setattr(job, spec.relation, [spec.rows(fold=i) for i in range(params.folds)])
    return submit(session, celery, queue, job)
