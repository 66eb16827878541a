"""GPU and CPU queues: a job goes to the GPU queue while a GPU worker announces itself, falls back to the CPU
queue otherwise (for the kinds allowed to), and a worker's queues, concurrency and devices follow its GPUs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.core.broker import BrokerProbe
from service.core.celery_app import make_celery
from service.core.config import Settings
from service.core.launcher import worker_command
from service.core.queues import (
    Presence,
    QueueRouter,
    child_device,
    cpu_queue,
    gpu_queue,
    worker_concurrency,
    worker_queues,
)
from tests.service.conftest import TINY_BUDGET, Stack


def test_a_workers_queues_concurrency_and_devices_follow_its_gpus(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"worker_concurrency": 0, "device": "auto"})
    gpu, cpu = gpu_queue(settings), cpu_queue(settings)
    assert worker_queues(settings, gpus=0) == [cpu]
    assert worker_queues(settings, gpus=2) == [gpu, cpu]  # the GPU queue first
    assert worker_queues(settings.model_copy(update={"worker_queues": "gpu"}), gpus=2) == [gpu]
    assert (worker_concurrency(settings, 0), worker_concurrency(settings, 4)) == (1, 4)
    assert worker_concurrency(settings.model_copy(update={"worker_concurrency": 3}), 4) == 3
    assert [child_device(settings, 2, i) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert (child_device(settings, 1, 5), child_device(settings, 0, 0)) == ("cuda", "cpu")
    cpu_only = stack.settings.model_copy(update={"device": "cpu", "worker_concurrency": 0})
    command = worker_command(cpu_only)
    assert command[command.index("--queues") + 1] == cpu and command[command.index("--concurrency") + 1] == "1"


def test_unknown_job_kinds_in_the_queue_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown job kind"):
        Settings(gpu_kinds="ranking,training")
    assert Settings(cpu_fallback_kinds="ranking, probe").cpu_fallback_kinds == ["ranking", "probe"]


def test_jobs_go_to_the_gpu_queue_only_while_a_gpu_worker_is_there(stack: Stack) -> None:
    settings = stack.settings.model_copy(
        update={"queue": f"{stack.settings.queue}_route_{os.urandom(3).hex()}", "cpu_fallback_kinds": ["ranking"]}
    )
    presence = Presence(settings)
    router = QueueRouter(settings, presence)
    try:
        assert router.queue_for("ranking") == cpu_queue(settings)  # no GPU worker: falls back
        assert router.queue_for("alchemy") == gpu_queue(settings)  # may not fall back: waits for one
        presence.announce("gpu-host-1")
        presence._cached = None  # the API reads presence every PRESENCE_CACHE_S; here at once
        assert router.queue_for("ranking") == gpu_queue(settings)
        assert router.for_task("bnrank.probe") == gpu_queue(settings)  # task names map to their kind
        presence.withdraw("gpu-host-1")
        presence._cached = None
        assert router.queue_for("ranking") == cpu_queue(settings)
        cpu_kinds = settings.model_copy(update={"gpu_kinds": ["alchemy"]})
        assert QueueRouter(cpu_kinds, presence).queue_for("probe") == cpu_queue(settings)  # not GPU work at all
    finally:
        router.close()


def test_a_submission_lands_in_the_gpu_queue_the_sweep_sees_it_there(
    stack: Stack,
    serve_app: Callable[..., Any],
    alice: httpx.Client,
    candidates: dict[str, str],
    dataset_id: str,
) -> None:
    settings = stack.settings.model_copy(update={"queue": f"{stack.settings.queue}_gpu_{os.urandom(3).hex()}"})
    presence = Presence(settings)
    presence.announce("gpu-host-2")
    probe = BrokerProbe(settings, make_celery(settings))
    try:
        with serve_app(settings) as url, httpx.Client(base_url=url, headers=alice.headers, timeout=60) as client:
            body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"]], "budget": TINY_BUDGET}
            response = client.post("/v1/rankings", json=body)
            assert response.status_code == 202, response.text
            job = client.get(f"/v1/rankings/{response.json()['id']}").json()
            assert client.post(f"/v1/jobs/{job['job']['id']}/cancel").status_code in (200, 202)  # no GPU worker
        task_ids = {e["id"] for e in job["entries"]}
        assert len(task_ids) == 2  # the candidate and its control
        assert probe.queue_length() == 2  # both queues counted: /readyz and the metrics see GPU work too
        pending = probe.pending_task_ids()
        assert pending is not None and len(pending) == 2  # the recovery sweep does not take them for lost
    finally:
        presence.withdraw("gpu-host-2")
        presence.close()
        probe.close()
