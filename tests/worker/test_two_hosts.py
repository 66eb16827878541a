"""Workers on "other hosts": each with its own blob cache, working folders and no data root holding the dataset,
sharing only the database, the broker and the object store with the API.

A ranking of an ``s3://`` dataset run by two such workers gives the same entries as a run by one, and killing
one of the two mid-ranking loses nothing: the survivor's recovery sweep re-sends the dead worker's entry.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.config import Settings
from service.core.launcher import WorkerProcess
from tests.engine.volumes import write_nnunet_dataset
from tests.service.conftest import TINY_BUDGET, Stack, upload, wait_for, wait_job
from tests.service.core.test_objectstore import upload_folder


def _host(stack: Stack, folder: Path, queue: str) -> Settings:
    """A worker's settings on a host of its own: its own caches, a data root without the dataset."""
    (folder / "no-data").mkdir(parents=True, exist_ok=True)
    return stack.settings.model_copy(
        update={
            "queue": queue,
            "blob_dir": folder / "blobs",
            "cache_dir": folder / "cache",
            "data_roots": [folder / "no-data"],
            # The survivor notices a dead worker's entry quickly: heartbeat lease and sweep in seconds.
            "lease_s": 3.0,
            "recover_interval_s": 1.0,
            "requeue_after_s": 2.0,
        }
    )


@contextlib.contextmanager
def _workers(hosts: list[Settings], log: Path) -> Iterator[list[WorkerProcess]]:
    with log.open("ab") as out:
        started = [WorkerProcess(h, log=out) for h in hosts]
        try:
            for w in started:
                w.wait_ready(timeout_s=120)
            yield started
        finally:
            for w in started:
                w.stop(grace_s=10)


def _entries(client: httpx.Client, job_id: str) -> list[tuple[Any, ...]]:
    ranking = client.get(f"/v1/rankings/{job_id}").json()
    return [(e["name"], e["status"], e["rank"], e["score"], e["steps"]) for e in ranking["entries"]]


def test_two_workers_sharing_only_db_broker_and_store_rank_like_one_and_survive_a_kill(
    stack: Stack,
    alice: httpx.Client,
    serve_app: Callable[..., Any],
    checkpoint_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    if stack.s3 is None:
        pytest.skip("the stack keeps blobs in a folder: a worker on another host would need it shared")
    folder = write_nnunet_dataset(tmp_path / "Dataset004_Hosts", n_cases=4, shape=(24, 24, 24), n_labels=2)
    uri = upload_folder(stack.s3.client(), stack.settings.dataset_buckets[0], folder, "datasets/hosts")
    dataset = alice.post("/v1/datasets", json={"name": "hosts", "uri": uri})
    assert dataset.status_code in (200, 201), dataset.text
    ids = [upload(alice, checkpoint_files[n], modality="MR").json()["id"] for n in ("good_a", "good_b")]
    body = {"dataset_id": dataset.json()["id"], "checkpoint_ids": ids, "budget": TINY_BUDGET, "seed": 0}

    def rank(queue: str, hosts: list[Settings], kill_one: bool) -> tuple[list[tuple[Any, ...]], list[WorkerProcess]]:
        api_settings = stack.settings.model_copy(update={"queue": queue})
        with (
            serve_app(api_settings) as url,
            httpx.Client(base_url=url, headers=alice.headers, timeout=60) as client,
            _workers(hosts, tmp_path / f"{queue}.log") as workers,
        ):
            job = client.post("/v1/rankings", json=body)
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            if kill_one:

                def both_busy() -> bool:
                    entries = client.get(f"/v1/rankings/{job_id}").json()["entries"]
                    return sum(e["status"] == "running" for e in entries) >= 2

                wait_for(both_busy, 120, "both workers to run an entry")
                os.killpg(workers[0].process.pid, signal.SIGKILL)  # the host is gone, mid-entry
                workers[0].process.wait(timeout=30)
            done = wait_job(client, job_id, timeout_s=300)
            assert done["status"] == "succeeded", done
            return _entries(client, job_id), workers

    # Queues of their own, so the session's worker (which shares the API's folders) takes none of this work.
    suffix = os.urandom(3).hex()
    alone = f"{stack.settings.queue}_one_{suffix}"
    one, _ = rank(alone, [_host(stack, tmp_path / "h0", alone)], kill_one=False)
    queue = f"{stack.settings.queue}_two_{suffix}"
    hosts = [_host(stack, tmp_path / f"h{i}", queue) for i in (1, 2)]
    two, _ = rank(queue, hosts, kill_one=True)
    assert len(one) == 3 and all(e[1] == "ok" for e in one), one  # two candidates and the control
    assert two == one
    # The survivor read the blobs into its own cache and made its own copy of the dataset; no host's data
    # root ever held it.
    survivor = hosts[1]
    assert any((survivor.blobs / "sha256").rglob("*")) and any((survivor.preprocess_cache / "s3-datasets").iterdir())
    assert all(not any(h.data_roots[0].iterdir()) for h in hosts)
