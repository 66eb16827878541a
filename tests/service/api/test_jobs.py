"""``/v1/jobs`` through the real worker: the event stream, listing and filters, cancelling."""

from __future__ import annotations

from typing import Any

import httpx

from service.core.launcher import WorkerProcess
from tests.service.conftest import TINY_BUDGET, Stack, wait_for, wait_job


def test_events_stream_progress_until_the_job_ends(ranked: dict[str, Any]) -> None:
    events = ranked["events"]
    names = [name for name, _ in events]
    assert names[-1] == "end" and names.count("end") == 1
    assert set(names[:-1]) == {"progress"} and len(names) >= 3
    assert events[0][1]["status"] in ("queued", "running")
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["progress"] == 1.0
    assert any(data["status"] == "running" for _, data in events)
    assert [e["status"] for e in events[-1][1]["entries"]].count("ok") == 3


def test_jobs_list_and_filters(alice: httpx.Client, ranked: dict[str, Any]) -> None:
    job_id = ranked["job"]["id"]
    assert job_id in {j["id"] for j in alice.get("/v1/jobs", params={"kind": "ranking", "limit": 500}).json()["items"]}
    succeeded = alice.get("/v1/jobs", params={"status": "succeeded", "limit": 500}).json()
    assert job_id in {j["id"] for j in succeeded["items"]}
    assert all(j["status"] == "succeeded" for j in succeeded["items"])
    assert job_id not in {j["id"] for j in alice.get("/v1/jobs", params={"status": "running"}).json()["items"]}
    assert alice.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert alice.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_finished_jobs_cannot_be_cancelled(alice: httpx.Client, ranked: dict[str, Any]) -> None:
    response = alice.post(f"/v1/jobs/{ranked['job']['id']}/cancel")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]


def test_cancel_stops_a_running_job(
    worker: WorkerProcess, alice: httpx.Client, candidates: dict[str, str], dataset_id: str, stack: Stack
) -> None:
    long_budget = {**TINY_BUDGET, "max_steps": 100_000, "val_every": 2, "patience": 100_000}
    response = alice.post(
        "/v1/rankings",
        json={
            "dataset_id": dataset_id,
            "checkpoint_ids": [candidates["good_a"], candidates["good_b"]],
            "budget": long_budget,
        },
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def training() -> bool:
        job = alice.get(f"/v1/jobs/{job_id}").json()
        return job["status"] == "running" and "step" in job["message"]

    wait_for(training, 60, "the job to report training steps")
    # A checkpoint in use by a running job cannot be deleted.
    busy = alice.delete(f"/v1/checkpoints/{candidates['good_a']}")
    assert busy.status_code == 409 and job_id in busy.json()["detail"]

    cancel = alice.post(f"/v1/jobs/{job_id}/cancel")
    assert cancel.status_code == 202
    assert cancel.json()["cancel_requested"] is True
    job = wait_job(alice, job_id, timeout_s=60)
    assert job["status"] == "cancelled" and job["error"] is None and job["finished_at"] is not None
    entries = alice.get(f"/v1/rankings/{job_id}").json()["entries"]
    assert {e["status"] for e in entries} == {"cancelled"}
    assert all(e["steps"] < 100_000 for e in entries)
    assert alice.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
