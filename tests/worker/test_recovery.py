"""The recovery sweep: lost messages and dead workers' work are re-sent once, live work is left alone.

The jobs here go to a queue no worker consumes, so the test controls every step: it loses the messages
itself (a purge, as a Redis restart without persistence does), stages dead workers by ageing heartbeats,
and finally runs the re-sent work in-process to show the job then completes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from service.core.broker import BrokerProbe
from service.core.celery_app import make_celery
from service.core.db import Database
from service.core.models import Job, RankingEntry, utcnow
from service.core.recovery import sweep
from tests.service.conftest import TINY_BUDGET, Stack, new_key, upload
from worker.context import WorkerContext
from worker.ranking import run_rank_entry


@pytest.fixture(scope="module")
def idle(stack: Stack, serve_app: Callable[..., AbstractContextManager[str]]) -> Iterator[dict[str, Any]]:
    """An API whose queue no worker consumes, a client for it, and what the sweep needs."""
    settings = stack.settings.model_copy(
        update={"queue": stack.settings.queue + "_idle", "requeue_after_s": 0.5, "lease_s": 5.0}
    )
    celery = make_celery(settings)
    probe = BrokerProbe(settings, celery)
    db = Database(settings)
    with serve_app(settings) as url:
        headers = {"Authorization": f"Bearer {new_key(stack, 'carol')}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            yield {"settings": settings, "celery": celery, "probe": probe, "db": db, "client": client}
    with celery.connection_for_write() as conn:
        conn.default_channel.queue_purge(settings.queue)
    probe.close()
    db.dispose()


def _sweep(idle: dict[str, Any]):
    return sweep(idle["db"], idle["celery"], idle["settings"], idle["probe"].pending_task_ids)


def _rows(idle: dict[str, Any], job_id: str) -> list[RankingEntry]:
    with idle["db"].sessions() as s:
        return list(
            s.scalars(select(RankingEntry).where(RankingEntry.job_id == job_id).order_by(RankingEntry.position))
        )


def _age(idle: dict[str, Any], job_id: str, seconds: float) -> None:
    """Pretend the job's messages were sent ``seconds`` ago."""
    with idle["db"].session() as s:
        s.execute(
            update(RankingEntry)
            .where(RankingEntry.job_id == job_id)
            .values(dispatched_at=utcnow() - timedelta(seconds=seconds))
        )


def test_lost_messages_and_dead_workers_are_recovered_once(
    stack: Stack, idle: dict[str, Any], checkpoint_files: dict[str, Path], dataset_dir: Path
) -> None:
    client: httpx.Client = idle["client"]
    ckpts = [upload(client, checkpoint_files[n]).json()["id"] for n in ("good_a", "good_b")]
    dataset = client.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)}).json()["id"]
    body = {"dataset_id": dataset, "checkpoint_ids": ckpts, "budget": TINY_BUDGET, "control": False}
    response = client.post("/v1/rankings", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    sent = {r.id: r.task_id for r in _rows(idle, job_id)}
    assert all(sent.values()) and set(sent.values()) <= idle["probe"].pending_task_ids()

    # Waiting in the broker, however long: not lost.
    _age(idle, job_id, 3600)
    assert not _sweep(idle)

    # The broker forgets them (a Redis restart without persistence): each is sent again, exactly once.
    with idle["celery"].connection_for_write() as conn:
        conn.default_channel.queue_purge(idle["settings"].queue)
    assert not (set(sent.values()) & idle["probe"].pending_task_ids())
    report = _sweep(idle)
    assert sorted(report.lost) == sorted(sent) and not report.orphaned
    resent = {r.id: r.task_id for r in _rows(idle, job_id)}
    assert all(resent[r] != sent[r] for r in sent)
    assert set(resent.values()) <= idle["probe"].pending_task_ids()
    _age(idle, job_id, 3600)
    assert not _sweep(idle)  # the new messages are there: nothing more to do
    with idle["db"].sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.task_ids[-2:] == list(resent.values())

    # A worker took the first entry and died (heartbeat older than the lease); the second one's worker is
    # alive. Only the dead one's work goes back to the queue.
    dead, alive = list(sent)
    now = utcnow()
    with idle["db"].session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="running"))
        for row_id, beat in ((dead, now - timedelta(seconds=60)), (alive, now)):
            s.execute(
                update(RankingEntry)
                .where(RankingEntry.id == row_id)
                .values(status="running", attempts=1, started_at=beat, heartbeat_at=beat)
            )
    report = _sweep(idle)
    assert report.orphaned == [dead] and not report.lost
    rows = {r.id: r for r in _rows(idle, job_id)}
    assert rows[dead].status == "queued" and rows[dead].task_id in idle["probe"].pending_task_ids()
    assert rows[alive].status == "running" and rows[alive].task_id == resent[alive]

    # The re-sent work runs (here in-process) and the job completes; the live worker's entry is refused to
    # a duplicate delivery while its heartbeat is fresh.
    ctx = WorkerContext(idle["settings"])
    try:
        assert run_rank_entry(ctx, job_id, dead) == "ok"
        # The live worker keeps beating (the run above may outlast the 5 s lease on a loaded machine).
        with idle["db"].session() as s:
            s.execute(update(RankingEntry).where(RankingEntry.id == alive).values(heartbeat_at=utcnow()))
        assert run_rank_entry(ctx, job_id, alive) == "skipped"
        with idle["db"].session() as s:  # that worker dies too
            s.execute(
                update(RankingEntry).where(RankingEntry.id == alive).values(heartbeat_at=now - timedelta(hours=1))
            )
        assert _sweep(idle).orphaned == [alive]
        assert run_rank_entry(ctx, job_id, alive) == "ok"
    finally:
        ctx.db.dispose()
    ranking = client.get(f"/v1/rankings/{job_id}").json()
    assert ranking["job"]["status"] == "succeeded"
    assert sorted(e["rank"] for e in ranking["entries"]) == [1, 2]
    assert {r.attempts for r in _rows(idle, job_id)} == {2}


def test_a_job_left_open_after_its_last_row_finished_is_closed(stack: Stack, idle: dict[str, Any]) -> None:
    """The process died between committing the last row and closing the job: the sweep closes it."""
    with idle["db"].session() as s:
        job = Job(owner="carol", kind="ranking", params={"budget": TINY_BUDGET}, status="running")
        job.entries = [
            RankingEntry(slot="a", position=0, name="a", status="ok", score=0.5, curve=[], steps=4),
            RankingEntry(slot="b", position=1, name="b", status="failed", error="boom"),
        ]
        s.add(job)
        s.flush()
        job_id = job.id
    report = _sweep(idle)
    assert report.closed == [job_id] and not report.lost and not report.orphaned
    with idle["db"].sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        ranks = dict(s.execute(select(RankingEntry.name, RankingEntry.rank).where(RankingEntry.job_id == job_id)).all())
    assert ranks == {"a": 1, "b": None}
