"""Rankings through the real worker: ordering, a broken candidate, SSE, cancel, redelivery, ownership."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from service.client import Client
from service.launcher import WorkerProcess
from service.models import GammaStat, Job, RankingEntry, utcnow
from tests.service.conftest import TINY_BUDGET, Stack, upload, wait_for, wait_job
from worker.tasks import WorkerContext, run_rank_entry


def _key(client: httpx.Client) -> str:
    return client.headers["authorization"].split(" ", 1)[1]


@pytest.fixture(scope="module")
def candidates(alice: httpx.Client, checkpoint_files: dict[str, Path]) -> dict[str, str]:
    ids = {}
    for name, path in checkpoint_files.items():
        response = upload(alice, path, modality="MR")
        assert response.status_code in (200, 201), response.text
        ids[name] = response.json()["id"]
    return ids


@pytest.fixture(scope="module")
def dataset_id(alice: httpx.Client, dataset_dir: Path) -> str:
    response = alice.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def ranked(
    worker: WorkerProcess, api: str, alice: httpx.Client, candidates: dict[str, str], dataset_id: str
) -> dict[str, Any]:
    """One ranking of two good candidates and a broken one, followed over SSE from queueing to the end."""
    response = alice.post(
        "/v1/rankings",
        json={
            "dataset_id": dataset_id,
            "checkpoint_ids": [candidates["good_a"], candidates["exploding"], candidates["good_b"]],
            "budget": TINY_BUDGET,
            "seed": 0,
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/rankings/{job['id']}"
    with Client(api, _key(alice)) as client:
        events = list(client.events(job["id"]))
    return {"job": job, "events": events, "ranking": alice.get(f"/v1/rankings/{job['id']}").json()}


def test_queued_job_shape(ranked: dict[str, Any]) -> None:
    job = ranked["job"]
    assert job["id"].startswith("job_") and job["kind"] == "ranking" and job["status"] == "queued"
    assert job["params"]["budget"]["patch_size"] == [16, 16, 16]
    assert job["params"]["control"] is True


def test_ranking_orders_the_good_and_fails_only_the_broken_candidate(ranked: dict[str, Any]) -> None:
    ranking = ranked["ranking"]
    assert ranking["job"]["status"] == "succeeded", ranking["job"]
    assert ranking["job"]["progress"] == 1.0 and ranking["job"]["finished_at"] is not None
    entries = ranking["entries"]
    names = [e["name"] for e in entries]
    assert len(entries) == 4  # three candidates and one control (all are unet3d of width 4)
    ok = [e for e in entries if e["status"] == "ok"]
    assert [e["rank"] for e in ok] == [1, 2, 3]
    assert [e["score"] for e in ok] == sorted((e["score"] for e in ok), reverse=True)
    assert {e["name"] for e in ok} == {"good_a", "good_b", "control: random init (unet3d)"}
    broken = entries[-1]
    assert (broken["name"], broken["status"], broken["rank"]) == ("exploding", "failed", None)
    assert "loss became nan" in broken["error"]
    assert names.count("control: random init (unet3d)") == 1
    for e in ok:
        assert set(e["dice_per_class"]) == {"tumor", "edema"}
        assert set(e["gamma"]) == {"raw", "after_bn"}
        assert e["gamma"]["after_bn"]["count"] > 0
        assert e["steps"] == 4 and len(e["curve"]) == 2 and e["seconds"] > 0 and e["error"] is None
    control = next(e for e in ok if e["is_control"])
    assert control["checkpoint_id"] is None
    assert set(ranking["stability"]) >= {"kendall_tau", "same_top1", "at_fraction"}


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


def test_other_owners_get_404(bob: httpx.Client, ranked: dict[str, Any], candidates: dict, dataset_id: str) -> None:
    job_id = ranked["job"]["id"]
    for method, path in (
        ("GET", f"/v1/rankings/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ):
        assert bob.request(method, path).status_code == 404, path
    assert job_id not in {j["id"] for j in bob.get("/v1/jobs").json()["items"]}
    # Nor can bob rank alice's checkpoints or dataset.
    body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"]], "budget": TINY_BUDGET}
    assert bob.post("/v1/rankings", json=body).status_code == 404


@pytest.mark.parametrize(
    ("change", "status", "expected"),
    [
        ({"dataset_id": "ds_unknown"}, 404, "dataset 'ds_unknown' not found"),
        ({"checkpoint_ids": ["ck_unknown"]}, 404, "ck_unknown"),
        ({"checkpoint_ids": []}, 422, "checkpoint_ids"),
        ({"budget": {"patch_size": 2}}, 422, "patch"),
        ({"budget": {"patch_size": [16, 16]}}, 422, "1 or 3"),
        ({"budget": {"max_steps": 0}}, 422, "max_steps"),
        ({"budget": {"max_step": 5}}, 422, "max_step"),
        ({"sead": 1}, 422, "sead"),
    ],
)
def test_bad_ranking_requests(
    alice: httpx.Client, candidates: dict, dataset_id: str, change: dict, status: int, expected: str
) -> None:
    body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"]], **change}
    response = alice.post("/v1/rankings", json=body)
    assert response.status_code == status, response.text
    assert expected in response.json()["detail"]


def test_duplicate_candidates_are_refused(alice: httpx.Client, candidates: dict, dataset_id: str) -> None:
    body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"], candidates["good_a"]]}
    response = alice.post("/v1/rankings", json=body)
    assert response.status_code == 422 and "listed twice" in response.json()["detail"]


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


def test_metrics_count_jobs_by_status(anonymous: httpx.Client, ranked: dict[str, Any]) -> None:
    text = anonymous.get("/metrics").text
    succeeded = next(line for line in text.splitlines() if line.startswith('bnrank_jobs{status="succeeded"}'))
    assert float(succeeded.split()[-1]) >= 1
    assert 'route="/v1/rankings/{job_id}"' in text
