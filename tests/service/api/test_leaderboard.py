"""Queries across jobs: ``/v1/leaderboard`` and ``/v1/checkpoints/{id}/results`` on rankings a real worker ran.

The expected values are rebuilt independently from the per-job endpoints (``/v1/jobs``, ``/v1/rankings``):
every scored entry of every ranking of the owner on the dataset.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.core.launcher import WorkerProcess
from tests.service.conftest import TINY_BUDGET, wait_job


@pytest.fixture(scope="module")
def second_ranking(
    worker: WorkerProcess, alice: httpx.Client, ranked: dict[str, Any], candidates: dict[str, str], dataset_id: str
) -> dict[str, Any]:
    """A later ranking of good_a alone (another seed), so good_a has a best and a latest score."""
    body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"]], "budget": TINY_BUDGET, "seed": 1}
    response = alice.post("/v1/rankings", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert wait_job(alice, job_id)["status"] == "succeeded"
    return alice.get(f"/v1/rankings/{job_id}").json()


def _all_scores(client: httpx.Client, dataset_id: str) -> dict[str, list[tuple[float, str, str, dict]]]:
    """checkpoint id → (score, job id, job created_at, entry) of every scored candidate entry on the dataset."""
    scores: dict[str, list[tuple[float, str, str, dict]]] = {}
    jobs = client.get("/v1/jobs", params={"kind": "ranking", "limit": 500}).json()["items"]
    for job in jobs:
        if job["dataset_id"] != dataset_id:
            continue
        ranking = client.get(f"/v1/rankings/{job['id']}").json()
        for entry in ranking["entries"]:
            if entry["status"] == "ok" and not entry["is_control"] and entry["checkpoint_id"]:
                scores.setdefault(entry["checkpoint_id"], []).append(
                    (entry["score"], job["id"], job["created_at"], entry)
                )
    return scores


def test_leaderboard_has_best_and_latest_per_checkpoint(
    alice: httpx.Client, second_ranking: dict[str, Any], ranked: dict[str, Any], candidates: dict, dataset_id: str
) -> None:
    expected = _all_scores(alice, dataset_id)
    board = alice.get("/v1/leaderboard", params={"dataset_id": dataset_id, "limit": 500}).json()
    assert board["total"] == len(expected) == len(board["items"]) and board["offset"] == 0
    rows = {row["checkpoint_id"]: row for row in board["items"]}
    assert set(rows) == set(expected)
    assert candidates["exploding"] not in rows  # it never scored
    best = [r["best"]["score"] for r in board["items"]]
    assert best == sorted(best, reverse=True)
    for ckpt, found in expected.items():
        row = rows[ckpt]
        assert row["runs"] == len(found)
        assert row["best"]["score"] == pytest.approx(max(s for s, *_ in found))
        latest = max(found, key=lambda f: f[2])
        assert row["latest"]["job_id"] == latest[1] and row["latest"]["score"] == pytest.approx(latest[0])
    good_a = rows[candidates["good_a"]]
    assert good_a["runs"] >= 2 and good_a["latest"]["job_id"] == second_ranking["job"]["id"]
    assert good_a["name"] == "good_a" and good_a["architecture"] == "unet3d"
    # The control of the first ranking is reported beside its candidates' scores from that job.
    first = ranked["ranking"]
    control = next(e for e in first["entries"] if e["is_control"])
    refs = [r[ref] for r in board["items"] for ref in ("best", "latest") if r[ref]["job_id"] == first["job"]["id"]]
    assert refs and all(ref["control_score"] == pytest.approx(control["score"]) for ref in refs)
    assert all(ref["steps"] == TINY_BUDGET["max_steps"] for ref in refs)


def test_leaderboard_pages_and_filters(alice: httpx.Client, second_ranking: dict[str, Any], dataset_id: str) -> None:
    whole = alice.get("/v1/leaderboard", params={"dataset_id": dataset_id}).json()
    assert whole["total"] >= 2
    first = alice.get("/v1/leaderboard", params={"dataset_id": dataset_id, "limit": 1}).json()
    second = alice.get("/v1/leaderboard", params={"dataset_id": dataset_id, "limit": 1, "offset": 1}).json()
    assert (first["limit"], len(first["items"]), len(second["items"])) == (1, 1, 1)
    assert [first["items"][0], second["items"][0]] == whole["items"][:2]
    assert first["total"] == second["total"] == whole["total"]
    # Other tests rank other architectures on this session's shared dataset: the filter keeps exactly the unet3d rows.
    assert whole["total"] <= whole["limit"]
    same = alice.get("/v1/leaderboard", params={"dataset_id": dataset_id, "architecture": "unet3d"}).json()
    assert same["total"] == sum(row["architecture"] == "unet3d" for row in whole["items"]) >= 2
    assert all(row["architecture"] == "unet3d" for row in same["items"])
    none = alice.get("/v1/leaderboard", params={"dataset_id": dataset_id, "architecture": "resnet10"}).json()
    assert none == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_checkpoint_results_across_jobs(
    alice: httpx.Client, second_ranking: dict[str, Any], ranked: dict[str, Any], candidates: dict, dataset_id: str
) -> None:
    good_a = candidates["good_a"]
    results = alice.get(f"/v1/checkpoints/{good_a}/results", params={"limit": 500}).json()
    by_job = {r["job_id"]: r for r in results["items"]}
    assert results["total"] == len(results["items"]) >= 2
    created = [r["job_created_at"] for r in results["items"]]
    assert created == sorted(created, reverse=True)  # newest job first
    first_entry = next(e for e in ranked["ranking"]["entries"] if e["checkpoint_id"] == good_a)
    row = by_job[ranked["job"]["id"]]
    assert (row["entry_id"], row["status"], row["rank"]) == (first_entry["id"], "ok", first_entry["rank"])
    assert row["score"] == pytest.approx(first_entry["score"])
    assert row["dice_per_class"] == first_entry["dice_per_class"]
    assert row["norm_kinds"] == first_entry["norm_kinds"] == ["batch"]
    # The dataset's current name: another test may re-register the shared folder under its own (same row, issue 14).
    current = alice.get(f"/v1/datasets/{dataset_id}").json()["name"]
    assert (row["dataset_id"], row["dataset_name"]) == (dataset_id, current)
    assert row["control_score"] is not None
    assert by_job[second_ranking["job"]["id"]]["status"] == "ok"
    failed = alice.get(f"/v1/checkpoints/{candidates['exploding']}/results", params={"status": "failed"}).json()
    assert failed["total"] >= 1 and all(r["status"] == "failed" and r["score"] is None for r in failed["items"])
    assert "nan" in failed["items"][0]["error"]
    elsewhere = alice.get(f"/v1/checkpoints/{good_a}/results", params={"dataset_id": "ds_elsewhere"}).json()
    assert elsewhere["total"] == 0 and elsewhere["items"] == []


def test_owner_scoping_and_bad_requests(
    alice: httpx.Client, bob: httpx.Client, anonymous: httpx.Client, ranked: dict, candidates: dict, dataset_id: str
) -> None:
    for path, params in (
        ("/v1/leaderboard", {"dataset_id": dataset_id}),
        (f"/v1/checkpoints/{candidates['good_a']}/results", {}),
    ):
        refused = bob.get(path, params=params)
        assert refused.status_code == 404 and "not found" in refused.json()["detail"], path
        assert anonymous.get(path, params=params).status_code == 401
    missing = alice.get("/v1/leaderboard")
    assert missing.status_code == 422 and "dataset_id" in missing.json()["detail"]
    assert alice.get("/v1/leaderboard", params={"dataset_id": dataset_id, "limit": 0}).status_code == 422
    assert alice.get("/v1/leaderboard", params={"dataset_id": "ds_unknown"}).status_code == 404
    assert alice.get(f"/v1/checkpoints/{candidates['good_a']}/results", params={"status": "bogus"}).status_code == 422


def test_documented_in_openapi(anonymous: httpx.Client) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]
    board = paths["/v1/leaderboard"]["get"]
    assert {"200", "401", "404", "422"} <= set(board["responses"])
    assert {p["name"] for p in board["parameters"]} == {"dataset_id", "limit", "offset", "architecture"}
    results = paths["/v1/checkpoints/{checkpoint_id}/results"]["get"]
    assert {p["name"] for p in results["parameters"]} >= {"checkpoint_id", "limit", "offset", "dataset_id", "status"}
    assert not [p for p in paths if p.startswith("/ui")]
