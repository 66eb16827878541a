"""γ-clipping probe jobs through the real worker: one task per fold, a table per threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.launcher import WorkerProcess
from tests.service.conftest import TINY_BUDGET, upload, wait_job


@pytest.fixture(scope="module")
def setup(alice: httpx.Client, checkpoint_files: dict[str, Path], dataset_dir: Path) -> dict[str, str]:
    ckpt = upload(alice, checkpoint_files["good_a"]).json()["id"]
    dataset = alice.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)}).json()["id"]
    return {"checkpoint_id": ckpt, "dataset_id": dataset}


@pytest.fixture(scope="module")
def probe_job(worker: WorkerProcess, alice: httpx.Client, setup: dict[str, str]) -> dict[str, Any]:
    body = {**setup, "budget": TINY_BUDGET, "thresholds": [0.9, 0.05, 2.0], "draws": 2, "folds": 2}
    response = alice.post("/v1/probes", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "probe" and response.headers["location"] == f"/v1/probes/{job['id']}"
    assert wait_job(alice, job["id"], timeout_s=180)["status"] == "succeeded"
    return alice.get(f"/v1/probes/{job['id']}").json()


def test_probe_reports_clipping_by_threshold_and_at_random(probe_job: dict[str, Any]) -> None:
    assert [f["fold"] for f in probe_job["folds"]] == [0, 1]
    for fold in probe_job["folds"]:
        assert fold["status"] == "ok" and fold["error"] is None and fold["progress"] == 1.0
        assert 0.0 <= fold["dice_unclipped"] <= 1.0
        assert fold["bn_only"]["steps"] == TINY_BUDGET["max_steps"]
        assert "after_bn" in fold["gamma"] and fold["gamma"]["after_bn"]["count"] == fold["n_channels"]
        rows = fold["rows"]
        assert [r["threshold"] for r in rows] == [0.05, 0.9, 2.0]  # sorted, as the schema promises
        clipped = [r["n_clipped"] for r in rows]
        assert clipped == sorted(clipped)  # a higher threshold never clips fewer channels
        # A 4-step BN-only run leaves every |γ| near 1: nothing is under 0.05, everything is under 2.
        assert rows[0]["n_clipped"] == 0 and rows[0]["dice_threshold"] == fold["dice_unclipped"]
        assert rows[-1]["share_clipped"] == 1.0
        for r in rows:
            assert len(r["dice_random_draws"]) == 2
            assert 0.0 <= r["dice_threshold"] <= 1.0 and 0.0 <= r["dice_random"] <= 1.0


def test_probe_jobs_are_listed_and_owned(
    alice: httpx.Client, bob: httpx.Client, probe_job: dict[str, Any], setup: dict[str, str]
) -> None:
    job_id = probe_job["job"]["id"]
    listed = alice.get("/v1/jobs", params={"kind": "probe"}).json()["items"]
    assert job_id in [j["id"] for j in listed] and all(j["kind"] == "probe" for j in listed)
    assert bob.get(f"/v1/probes/{job_id}").status_code == 404
    assert bob.post("/v1/probes", json=setup).status_code == 404  # alice's dataset and checkpoint
    # A probe id is not an alchemy or ranking id.
    assert alice.get(f"/v1/alchemy/{job_id}").status_code == 404
    assert alice.get(f"/v1/rankings/{job_id}").status_code == 404


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"thresholds": [0.1, -1.0]}, "thresholds"),
        ({"thresholds": []}, "thresholds"),
        ({"draws": 0}, "draws"),
        ({"folds": 99}, "folds"),
        ({"budget": {"max_step": 3}}, "max_step"),
    ],
)
def test_bad_probe_requests_are_refused_with_the_field_named(
    alice: httpx.Client, setup: dict[str, str], change: dict[str, Any], problem: str
) -> None:
    response = alice.post("/v1/probes", json={**setup, **change})
    assert response.status_code == 422, response.text
    assert problem in response.json()["detail"]
