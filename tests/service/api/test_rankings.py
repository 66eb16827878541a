"""Rankings through the real worker: ordering, a broken candidate, metrics, ownership, bad requests."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.conftest import TINY_BUDGET


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
        # what norm-only evaluation trained, written by the worker and served (unet3d: BatchNorm, nothing inserted)
        assert (e["norm_kinds"], e["inserted_affines"]) == (["batch"], [])
        assert 0 < e["norm_parameters"] < e["trained_parameters"]
    control = next(e for e in ok if e["is_control"])
    assert control["checkpoint_id"] is None
    assert set(ranking["stability"]) >= {"kendall_tau", "same_top1", "at_fraction"}


def test_finished_ranking_says_who_is_tied(ranked: dict[str, Any]) -> None:
    """Tie guidance reaches the API: every ranked entry has a group, the top group holds rank 1, by name."""
    ranking = ranked["ranking"]
    ok = [e for e in ranking["entries"] if e["status"] == "ok"]
    ties = ranking["ties"]
    assert ties["top_group"][0] == ok[0]["name"]
    assert [name for group in ties["groups"] for name in group] == [e["name"] for e in ok]
    assert 0.0 <= ties["p_top_is_best"] <= 1.0 and ties["p_top_is_best"] == ok[0]["p_best"]
    assert ok[0]["tie_group"] == 1 and all(isinstance(e["tie_group"], int) for e in ok)
    for e in ok:
        assert set(e["tied_with"]) <= {o["name"] for o in ok} - {e["name"]}
    # A group is the entries tied with its first (best) entry.
    for group in ties["groups"]:
        first = next(e for e in ok if e["name"] == group[0])
        assert set(group[1:]) <= set(first["tied_with"])
    broken = ranking["entries"][-1]
    assert broken["tie_group"] is None and broken["p_best"] is None


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


def test_metrics_count_jobs_by_status(anonymous: httpx.Client, ranked: dict[str, Any]) -> None:
    text = anonymous.get("/metrics").text
    succeeded = next(line for line in text.splitlines() if line.startswith('bnrank_jobs{status="succeeded"}'))
    assert float(succeeded.split()[-1]) >= 1
    assert 'route="/v1/rankings/{job_id}"' in text
