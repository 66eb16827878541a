"""The compose stack without Docker: migrate, api and a worker started by their entrypoint scripts, with the
environment docker-compose.yml gives them, against this machine's PostgreSQL and Redis; a ranking driven
through the API from upload to result; then the worker's graceful shutdown with a task in flight."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.launcher import free_port
from tests.deploy.launch import Service, dotenv, host_environment, process_env, run_once, wait_for
from tests.engine.volumes import write_nnunet_dataset
from tests.service.conftest import (
    PG_ADMIN,
    REDIS_URL,
    TINY_BUDGET,
    local_services_reachable,
    make_checkpoint,
    upload,
)


@pytest.fixture(scope="module")
def deployment() -> Iterator[dict[str, Any]]:
    """A fresh database and queue on the local services, and folders standing in for the volumes."""
    if not local_services_reachable():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 must run for the deploy tests")
    import psycopg
    import redis

    suffix = secrets.token_hex(4)
    database = f"bnrank_deploy_{suffix}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    root = Path(tempfile.mkdtemp(prefix="bnrank-deploy-"))
    mounts = {"/var/lib/bnrank": root / "state", "/data": root / "data"}
    for folder in mounts.values():
        folder.mkdir()
    env_file = dotenv(
        BNRANK_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        BNRANK_BROKER_URL=REDIS_URL,
        BNRANK_QUEUE=f"bnrank_deploy_{suffix}",
        BNRANK_BROKER_KEY_PREFIX=f"bnrank_deploy_{suffix}:",
        # This machine has 2 cores and the test runs beside the API: one task with one thread.
        CPU_WORKER_CONCURRENCY="1",
        CPU_WORKER_TORCH_THREADS="1",
        BNRANK_PROGRESS_INTERVAL_S="0.5",
    )
    try:
        yield {"root": root, "mounts": mounts, "env_file": env_file}
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"bnrank_deploy_{suffix}:*"):
            client.delete(key)
        client.close()


def test_gpu_and_cpu_workers_get_the_same_settings_but_the_device(deployment: dict[str, Any]) -> None:
    """The test runs the CPU worker; the GPU worker differs only in device, parallelism and queues (it also
    takes the GPU queue)."""
    gpu = host_environment("worker", deployment["env_file"], deployment["mounts"])
    cpu = host_environment("worker-cpu", deployment["env_file"], deployment["mounts"])
    differ = {k for k in gpu.keys() | cpu.keys() if gpu.get(k) != cpu.get(k)}
    assert differ <= {"BNRANK_DEVICE", "BNRANK_WORKER_CONCURRENCY", "BNRANK_TORCH_THREADS", "BNRANK_WORKER_QUEUES"}
    assert gpu["BNRANK_WORKER_QUEUES"] == "all" and cpu["BNRANK_WORKER_QUEUES"] == "cpu"
    assert gpu["BNRANK_DEVICE"] == "cuda" and cpu["BNRANK_DEVICE"] == "cpu"
    api = host_environment("api", deployment["env_file"], deployment["mounts"])
    shared = ("BNRANK_DATABASE_URL", "BNRANK_BROKER_URL", "BNRANK_QUEUE", "BNRANK_BLOB_DIR", "BNRANK_DATA_ROOTS")
    assert all(api[k] == cpu[k] for k in shared)


def test_entrypoints_run_a_ranking_end_to_end_and_the_worker_stops_gracefully(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    env_file, mounts, root = deployment["env_file"], deployment["mounts"], deployment["root"]
    migrate_env = host_environment("migrate", env_file, mounts)
    api_env = host_environment("api", env_file, mounts)
    worker_env = host_environment("worker-cpu", env_file, mounts)
    port = str(free_port())
    api_env.update(BNRANK_API_HOST="127.0.0.1", BNRANK_API_PORT=port)  # compose publishes 8000 instead

    # migrate: one shot, exit 0; a second run is a no-op (compose runs it at every `up`).
    for _ in range(2):
        done = run_once("migrate", migrate_env)
        assert done.returncode == 0, done.stdout + done.stderr
    key = subprocess.run(
        ["bnrank", "keys", "create", "--owner", "ops"],
        env=process_env(migrate_env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    api = Service("api", api_env, root)
    worker = Service("worker-cpu", worker_env, root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 90, "the API to be ready")
        wait_for(lambda: "ready" in worker.log(), 120, "the worker to be ready")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

        # The data root is the read-only /data volume: the dataset is placed there by the operator.
        write_nnunet_dataset(mounts["/data"] / "Dataset001_Tiny", n_cases=4, shape=(24, 24, 24), n_labels=2)
        ckpts = []
        for seed in (1, 2):
            response = upload(client, make_checkpoint(tmp_path / f"cand{seed}.safetensors", seed=seed))
            assert response.status_code == 201, response.text
            ckpts.append(response.json()["id"])
        # Root-relative: the same request works against the containers, where the root is /data.
        response = client.post("/v1/datasets", json={"name": "tiny", "uri": "Dataset001_Tiny"})
        assert response.status_code == 201, response.text
        dataset = response.json()["id"]

        body = {"dataset_id": dataset, "checkpoint_ids": ckpts, "budget": TINY_BUDGET}
        job_id = client.post("/v1/rankings", json=body).json()["id"]
        job = wait_for(lambda: _ended(client, job_id), 240, "the ranking to finish")
        assert job["status"] == "succeeded", job
        ranking = client.get(f"/v1/rankings/{job_id}").json()
        assert [e["rank"] for e in ranking["entries"]] == [1, 2, 3]  # two candidates and the control
        assert all(e["status"] == "ok" for e in ranking["entries"])
        # Blobs landed in the shared blob volume.
        assert any((mounts["/var/lib/bnrank"] / "blobs").rglob("*"))

        # Operations: Prometheus metrics and JSON logs that name the job.
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'bnrank_jobs{status="succeeded"} 1.0' in metrics
        assert 'bnrank_task_duration_seconds_count{status="ok",task="rank_entry"} 3.0' in metrics
        assert 'bnrank_http_requests_total{method="POST",route="/v1/rankings",status="202"} 1.0' in metrics
        assert "bnrank_queue_length 0.0" in metrics
        records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        assert records, "the worker wrote no JSON log lines (BNRANK_LOG_FORMAT=json in the compose file)"
        about_job = [r for r in records if r.get("job_id") == job_id]
        assert len({r.get("entry_id") for r in about_job}) == 3  # each entry's task logged under the job
        assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)

        # Graceful shutdown: SIGTERM while a task runs; the task finishes and is saved, then the worker exits.
        slow = {**TINY_BUDGET, "max_steps": 400, "val_every": 100, "patience": 1000}
        body = {"dataset_id": dataset, "checkpoint_ids": ckpts[:1], "budget": slow, "control": False}
        job_id = client.post("/v1/rankings", json=body).json()["id"]
        wait_for(lambda: _running_entry(client, job_id), 120, "the slow entry to start training")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout_s=300) == 0, worker.log()[-3000:]
        entry = client.get(f"/v1/rankings/{job_id}").json()["entries"][0]
        assert entry["status"] == "ok" and entry["steps"] == 400, entry
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        client.close()
    finally:
        worker.stop()
        api_code = api.stop()
    assert api_code == 0, api.log()[-3000:]


def _ended(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def _running_entry(client: httpx.Client, job_id: str) -> bool:
    entries = client.get(f"/v1/rankings/{job_id}").json()["entries"]
    return bool(entries) and entries[0]["status"] == "running" and entries[0]["progress"] > 0
