"""Worker behaviour: task bodies run in-process against the session's database (redelivery, leases) and
typed job parameters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from service.core.kinds import read_params
from service.core.models import GammaStat, Job, RankingEntry, utcnow
from service.core.params import RankingParams
from tests.service.conftest import TINY_BUDGET, Stack
from worker.context import WorkerContext
from worker.ranking import run_rank_entry


def _counts(stack: Stack, job_id: str) -> tuple[int, int]:
    with stack.db.session() as s:
        entries = s.scalar(select(func.count()).select_from(RankingEntry).where(RankingEntry.job_id == job_id))
        gammas = s.scalar(select(func.count()).select_from(GammaStat).where(GammaStat.job_id == job_id))
    return entries or 0, gammas or 0


@pytest.fixture(scope="module")
def worker_context(stack: Stack) -> Iterator[WorkerContext]:
    ctx = WorkerContext(stack.settings)
    yield ctx
    ctx.db.dispose()


def test_redelivered_tasks_do_not_duplicate_anything(
    stack: Stack, ranked: dict[str, Any], worker_context: WorkerContext
) -> None:
    job_id = ranked["job"]["id"]
    before = _counts(stack, job_id)
    good = next(e for e in ranked["ranking"]["entries"] if e["name"] == "good_a")

    # A second delivery of a finished task: nothing to do, nothing changes.
    assert run_rank_entry(worker_context, job_id, good["id"]) == "skipped"
    assert _counts(stack, job_id) == before

    # A worker is running the entry (job and entry 'running', heartbeat fresh): a duplicate delivery of
    # its message leaves it to that worker.
    with stack.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="running", finished_at=None))
        s.execute(
            update(RankingEntry)
            .where(RankingEntry.id == good["id"])
            .values(status="running", rank=None, heartbeat_at=utcnow())
        )
    assert run_rank_entry(worker_context, job_id, good["id"]) == "skipped"

    # The worker died (its heartbeat is older than the lease): the redelivery evaluates the entry again
    # over the same row, the job is closed again, and no row is added.
    stale = utcnow() - timedelta(seconds=worker_context.settings.lease_s + 1)
    with stack.db.session() as s:
        s.execute(update(RankingEntry).where(RankingEntry.id == good["id"]).values(heartbeat_at=stale))
    assert run_rank_entry(worker_context, job_id, good["id"]) == "ok"
    assert _counts(stack, job_id) == before
    with stack.db.session() as s:
        entry = s.get(RankingEntry, good["id"])
        job = s.get(Job, job_id)
        assert entry is not None and job is not None
        assert (entry.status, entry.attempts, entry.rank) == ("ok", 2, good["rank"])
        assert entry.score == pytest.approx(good["score"], abs=1e-6)  # same seed, same schedule
        assert job.status == "succeeded" and job.finished_at is not None


def test_unreadable_job_params_fail_the_entry_with_the_reason(stack: Stack, worker_context: WorkerContext) -> None:
    """The worker reads a job's params typed (service.core.params): a row it cannot read fails its entry and
    closes the job, instead of crashing the task (which would only be redelivered)."""
    with stack.db.session() as s:
        job = Job(owner="dora", kind="ranking", params={"budget": {"max_step": 4}})
        job.entries = [RankingEntry(slot="a", position=0, name="a")]
        s.add(job)
        s.flush()
        job_id, entry_id = job.id, job.entries[0].id
    assert run_rank_entry(worker_context, job_id, entry_id) == "failed"
    with stack.db.session() as s:
        entry = s.get(RankingEntry, entry_id)
        job = s.get(Job, job_id)
        assert entry is not None and job is not None
        assert entry.status == "failed" and "parameters cannot be read" in (entry.error or "")
        assert job.status == "failed" and "parameters cannot be read" in (job.error or "")


def test_the_worker_reads_the_budget_the_api_stored(stack: Stack, ranked: dict[str, Any]) -> None:
    """What the API wrote into jobs.params is what the worker trained with: typed, not poked at by key."""
    with stack.db.session() as s:
        job = s.get(Job, ranked["job"]["id"])
        assert job is not None
        params = read_params(job.kind, job.params)
    assert isinstance(params, RankingParams) and params.control is True
    config = params.train_config()
    assert (config.max_steps, config.patch_size, config.val_every) == (4, (16, 16, 16), TINY_BUDGET["val_every"])
    entries = [e for e in ranked["ranking"]["entries"] if e["status"] == "ok"]
    assert all(e["steps"] == config.max_steps for e in entries)
