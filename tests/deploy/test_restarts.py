"""A Redis or PostgreSQL restart in the middle of a ranking leaves no job stuck: every job ends.

The servers are this test's own (tests/deploy/servers.py), on other ports, because stopping the machine's
services would break every other test. Redis runs without persistence, the harder case: a restart loses
every queued and unacknowledged message (the compose stack's Redis keeps an append-only file). Leases and
sweeps are short here so the recovery shows within seconds; production uses the same code with minutes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.api.auth import create_key
from service.core.config import Settings
from service.core.db import Database, migrate
from service.core.launcher import WorkerProcess
from tests.deploy.launch import wait_for
from tests.deploy.servers import PostgresServer, RedisServer
from tests.engine.volumes import write_nnunet_dataset
from tests.service.conftest import TINY_BUDGET, ThreadedServer, make_checkpoint, upload

# Long enough that a restart lands while an entry trains and others wait in the queue.
# Long enough (a few seconds per entry) that the outage below meets a running task's progress reports.
BUDGET = {**TINY_BUDGET, "max_steps": 150, "val_every": 50, "patience": 100}
TERMINAL = ("succeeded", "failed", "cancelled")
LEASE_S = 4.0
OUTAGE_S = LEASE_S + 2


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    postgres, redis = PostgresServer(), RedisServer()
    root = Path(tempfile.mkdtemp(prefix="bnrank-restarts-"))
    data = root / "data"
    data.mkdir()
    postgres.start()
    redis.start()
    settings = Settings(
        home=root / "home",
        database_url=postgres.url,
        broker_url=redis.url,
        data_roots=[data],
        device="cpu",
        worker_concurrency=1,
        torch_threads=1,
        progress_interval_s=0.5,
        lease_s=LEASE_S,
        requeue_after_s=2.0,
        recover_interval_s=1.0,
    )
    settings.ensure_folders()
    migrate(settings)
    db = Database(settings)
    with db.session() as s:
        _, key = create_key(s, "ops")
    log = (root / "worker.log").open("wb")
    worker = WorkerProcess(settings, log=log)
    try:
        worker.wait_ready(120)
        with ThreadedServer(create_app(settings)) as server:
            client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            write_nnunet_dataset(data / "Dataset001_Tiny", n_cases=4, shape=(24, 24, 24), n_labels=2)
            ckpts = [upload(client, make_checkpoint(root / f"c{i}.safetensors", seed=i)).json()["id"] for i in (1, 2)]
            dataset = client.post("/v1/datasets", json={"name": "tiny", "uri": "Dataset001_Tiny"}).json()["id"]
            yield {
                "client": client,
                "postgres": postgres,
                "redis": redis,
                "db": db,
                "body": {"dataset_id": dataset, "checkpoint_ids": ckpts, "budget": BUDGET},
                "log": root / "worker.log",
            }
            client.close()
    finally:
        worker.stop(grace_s=30)
        log.close()
        db.dispose()
        redis.remove()
        postgres.remove()


def _ranking(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return client.get(f"/v1/rankings/{job_id}").json()


def _training(client: httpx.Client, job_id: str) -> bool:
    """One entry is training and at least one is still waiting in the broker."""
    entries = _ranking(client, job_id)["entries"]
    statuses = [e["status"] for e in entries]
    return any(e["status"] == "running" and e["progress"] > 0 for e in entries) and "queued" in statuses


def _ends_succeeded(client: httpx.Client, job_id: str) -> None:
    def ended() -> dict[str, Any] | None:
        ranking = _ranking(client, job_id)
        return ranking if ranking["job"]["status"] in TERMINAL else None

    ranking = wait_for(ended, 180, f"job {job_id} to end after the restart", interval_s=0.5)
    assert ranking["job"]["status"] == "succeeded", ranking["job"]
    assert [e["status"] for e in ranking["entries"]] == ["ok"] * 3
    assert sorted(e["rank"] for e in ranking["entries"]) == [1, 2, 3]


def test_a_redis_restart_loses_the_queue_and_the_ranking_still_finishes(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job_id = client.post("/v1/rankings", json=stack["body"]).json()["id"]
    wait_for(lambda: _training(client, job_id), 120, "an entry to train while others wait")
    stack["redis"].restart()  # no persistence: the waiting messages are gone
    _ends_succeeded(client, job_id)
    assert "re-sent" in stack["log"].read_text(errors="replace")  # the sweep, not luck, finished it


def test_a_postgres_restart_mid_ranking_leaves_no_job_running(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job_id = wait_for(lambda: _post(client, stack["body"]), 30, "the API to accept a ranking")
    wait_for(lambda: _training(client, job_id), 120, "an entry to train while others wait")
    # Fast shutdown cuts every open connection; down for longer than the lease, so the running entry's
    # heartbeat goes stale as it would if its worker had died with the database.
    stack["postgres"].stop()
    time.sleep(OUTAGE_S)
    stack["postgres"].start()
    _ends_succeeded(client, job_id)
    log = stack["log"].read_text(errors="replace")
    assert "not written" in log  # the outage did hit a running task's progress reports
    assert client.get("/v1/jobs", params={"status": "running"}).json()["total"] == 0
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["total"] == 0


def _post(client: httpx.Client, body: dict[str, Any]) -> str | None:
    response = client.post("/v1/rankings", json=body)
    return response.json()["id"] if response.status_code == 202 else None
