"""Alchemy jobs through the real worker (one task per fold), their results and downloadable weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bnrank.cli.client import Client
from bnrank.engine.fitting import load_checkpoint
from service.core.launcher import WorkerProcess
from tests.service.conftest import TINY_BUDGET, Stack, upload, wait_job


@pytest.fixture(scope="module")
def setup(alice: httpx.Client, checkpoint_files: dict[str, Path], dataset_dir: Path) -> dict[str, str]:
    ckpt = upload(alice, checkpoint_files["good_a"]).json()["id"]
    dataset = alice.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)}).json()["id"]
    return {"checkpoint_id": ckpt, "dataset_id": dataset}


@pytest.fixture(scope="module")
def alchemy_job(worker: WorkerProcess, alice: httpx.Client, setup: dict[str, str]) -> dict[str, Any]:
    response = alice.post("/v1/alchemy", json={**setup, "budget": TINY_BUDGET, "fraction": 0.2})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "alchemy" and response.headers["location"] == f"/v1/alchemy/{job['id']}"
    assert wait_job(alice, job["id"])["status"] == "succeeded"
    return alice.get(f"/v1/alchemy/{job['id']}").json()


def test_alchemy_reports_dice_kernels_gamma_and_weights(alchemy_job: dict[str, Any]) -> None:
    assert alchemy_job["job"]["status"] == "succeeded"
    [fold] = alchemy_job["results"]
    assert fold["fold"] == 0 and fold["status"] == "ok" and fold["error"] is None
    assert 0.0 <= fold["dice"]["score"] <= 1.0
    assert set(fold["dice"]["per_class"]) == {"tumor", "edema"}
    assert fold["reinitialised"]["reinitialised"] > 0  # 20 % of the kernels were re-drawn
    assert set(fold["gamma"]) == {"raw", "after_bn", "modified", "after_alchemy"}
    assert fold["metrics"]["mode"] == "alchemy" and fold["metrics"]["steps"] == 4
    assert alchemy_job["summary"]["dice_per_fold"] == [fold["dice"]["score"]]


def test_fine_tuned_weights_download_and_load(
    alice: httpx.Client, bob: httpx.Client, alchemy_job: dict[str, Any], tmp_path: Path, stack: Stack
) -> None:
    artifact_id = alchemy_job["results"][0]["artifact_id"]
    response = alice.get(f"/v1/artifacts/{artifact_id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert ".safetensors" in response.headers["content-disposition"]
    # The worker stored the weights in the stack's blob store (the folder, or the bucket) under their hash.
    assert stack.stored_size(response.headers["etag"].strip('"')) == len(response.content)
    path = tmp_path / "tuned.safetensors"
    path.write_bytes(response.content)
    _, report = load_checkpoint(path)
    assert report.architecture == "unet3d" and report.matched_fraction == 1.0
    assert bob.get(f"/v1/artifacts/{artifact_id}").status_code == 404
    assert alice.get("/v1/artifacts/art_unknown").status_code == 404


def test_k_fold_runs_one_task_per_fold(
    alice: httpx.Client, api: str, setup: dict[str, str], worker: WorkerProcess
) -> None:
    body = {**setup, "mode": "finetune", "folds": 2, "budget": TINY_BUDGET}
    response = alice.post("/v1/alchemy", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["folds"] == 2
    with Client(api, alice.headers["authorization"].split()[1]) as client:
        events = list(client.events(job["id"]))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"
    assert [e["name"] for e in events[-1][1]["entries"]] == ["fold 0", "fold 1"]
    result = alice.get(f"/v1/alchemy/{job['id']}").json()
    assert [r["fold"] for r in result["results"]] == [0, 1]
    assert all(r["status"] == "ok" and r["reinitialised"] == {} for r in result["results"])
    assert {"dice_mean", "dice_std"} <= set(result["summary"])
    assert len({r["artifact_id"] for r in result["results"]}) == 2


@pytest.mark.parametrize(
    ("change", "status", "expected"),
    [
        ({"threshold": 0.1, "fraction": 0.2}, 422, "not both"),
        ({"folds": 9}, 422, "folds"),
        ({"mode": "magic"}, 422, "mode"),
        ({"checkpoint_id": "ck_unknown"}, 404, "ck_unknown"),
        ({"dataset_id": "ds_unknown"}, 404, "ds_unknown"),
    ],
)
def test_bad_alchemy_requests(
    alice: httpx.Client, setup: dict[str, str], change: dict, status: int, expected: str
) -> None:
    response = alice.post("/v1/alchemy", json={**setup, **change})
    assert response.status_code == status, response.text
    assert expected in response.json()["detail"]


def test_alchemy_jobs_belong_to_their_owner(bob: httpx.Client, alchemy_job: dict[str, Any], setup: dict) -> None:
    assert bob.get(f"/v1/alchemy/{alchemy_job['job']['id']}").status_code == 404
    assert bob.post("/v1/alchemy", json=setup).status_code == 404


def test_alchemy_on_a_network_without_own_gamma_is_refused_before_queueing(
    alice: httpx.Client, dataset_dir: Path, tmp_path: Path
) -> None:
    """An InstanceNorm network without affine uploads (norm-only ranking inserts affines for the evaluation), but
    alchemy's γ steps would have nothing of its own to work on: 422 naming why, and no job."""
    import json

    from bnrank.engine.architectures import architecture_from_network_def
    from bnrank.engine.checkpoints import save_weights

    network_def = {"_target_": "UNet", "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2]}
    network_def["norm"] = "instance"
    path = save_weights(architecture_from_network_def(network_def).build(), tmp_path / "in_no_affine.safetensors")
    uploaded = upload(alice, path, network_def=json.dumps(network_def))
    assert uploaded.status_code == 201, uploaded.text
    dataset = alice.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)}).json()["id"]
    jobs_before = alice.get("/v1/jobs").json()
    body = {"checkpoint_id": uploaded.json()["id"], "dataset_id": dataset, "budget": TINY_BUDGET}
    response = alice.post("/v1/alchemy", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "identification and modification and maximization (R_γ) works on the network's own γ" in detail
    assert "have no affine of their own" in detail and "in_no_affine" in detail
    assert alice.get("/v1/jobs").json() == jobs_before
    alice.delete(f"/v1/checkpoints/{uploaded.json()['id']}")
