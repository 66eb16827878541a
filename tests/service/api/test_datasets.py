"""Dataset registration: data-root containment (.., symlinks, absolute paths), per-case checks, ownership."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.engine.volumes import truncate_file, write_nnunet_dataset
from tests.service.conftest import Stack


def test_register_reports_bad_cases_and_keeps_the_good_ones(alice: httpx.Client, stack: Stack) -> None:
    folder = write_nnunet_dataset(stack.data_root / "Dataset002_OneBad", n_cases=4, shape=(16, 16, 16))
    truncate_file(folder / "imagesTr" / "case_002_0000.nii.gz")
    response = alice.post("/v1/datasets", json={"name": "one bad", "uri": str(folder)})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ds_")
    assert (body["format"], body["modality"], body["n_cases"]) == ("nnunet", "MR", 3)
    assert body["labels"] == {"background": 0, "tumor": 1, "edema": 2}
    assert [p["case_id"] for p in body["problems"]] == ["case_002"]
    assert "unreadable" in body["problems"][0]["message"]
    assert len(body["fingerprint"]) == 64
    assert alice.get(f"/v1/datasets/{body['id']}").json() == body


def test_paths_relative_to_a_root_and_file_uris_work(alice: httpx.Client, dataset_dir: Path) -> None:
    body = {"name": "rel", "uri": dataset_dir.name, "modality": "CT"}
    relative = alice.post("/v1/datasets", params={"force": "true"}, json=body)  # other tests registered it
    assert relative.status_code in (200, 201), relative.text
    assert relative.json()["uri"] == dataset_dir.name  # relative to the data root: no server path shown
    assert relative.json()["modality"] == "CT"  # declared wins over detected
    # The same folder again is the same dataset (200); force re-checks it into the same row.
    again = {"name": "uri", "uri": f"file://{dataset_dir}", "format": "nnunet"}
    assert alice.post("/v1/datasets", json=again).json()["id"] == relative.json()["id"]
    as_uri = alice.post("/v1/datasets", params={"force": "true"}, json=again)
    assert as_uri.status_code == 200, as_uri.text
    assert (as_uri.json()["id"], as_uri.json()["name"]) == (relative.json()["id"], "uri")


@pytest.fixture(scope="module")
def outside_dataset(stack: Stack) -> Path:
    return write_nnunet_dataset(stack.outside / "Dataset009_Secret", n_cases=2, shape=(12, 12, 12))


def test_paths_outside_the_data_roots_are_refused(alice: httpx.Client, stack: Stack, outside_dataset: Path) -> None:
    link = stack.data_root / "innocent_looking_link"
    link.symlink_to(outside_dataset, target_is_directory=True)
    cases = {
        "absolute path outside": (str(outside_dataset), "outside the data roots"),
        "dot-dot": (f"{stack.data_root}/../outside/{outside_dataset.name}", "'..' is not allowed"),
        "relative dot-dot": (f"../outside/{outside_dataset.name}", "'..' is not allowed"),
        "symlink escaping": (str(link), "through a symlink"),
        "missing outside": ("/etc/definitely-not-here", "outside the data roots"),
        "remote scheme": ("gs://bucket/data", "only local paths"),
        "bucket not allowed": ("s3://bucket/data", "is not one datasets may come from"),
        "missing inside": (str(stack.data_root / "nope"), "does not exist"),
    }
    for what, (uri, expected) in cases.items():
        response = alice.post("/v1/datasets", json={"name": what, "uri": uri})
        assert response.status_code == 422, what
        assert expected in response.json()["detail"], (what, response.json())
        assert str(outside_dataset) not in response.json()["detail"] or what == "absolute path outside"


def test_a_symlink_that_stays_inside_the_roots_is_fine(alice: httpx.Client, stack: Stack, dataset_dir: Path) -> None:
    link = stack.data_root / "alias_inside"
    link.symlink_to(dataset_dir, target_is_directory=True)
    response = alice.post("/v1/datasets", json={"name": "alias", "uri": str(link)})
    assert response.status_code in (200, 201), response.text  # 200: the folder it names was registered before
    assert response.json()["uri"] == dataset_dir.name  # the folder it resolves to, relative to the data root


def test_unusable_datasets_are_422(alice: httpx.Client, stack: Stack, dataset_dir: Path) -> None:
    broken = stack.data_root / "Dataset003_AllBad"
    write_nnunet_dataset(broken, n_cases=2, shape=(12, 12, 12))
    for image in (broken / "imagesTr").iterdir():
        truncate_file(image)
    response = alice.post("/v1/datasets", json={"name": "all bad", "uri": str(broken)})
    assert response.status_code == 422
    assert "no usable case" in response.json()["detail"]

    single = stack.data_root / "Dataset004_Single"
    write_nnunet_dataset(single, n_cases=1, shape=(12, 12, 12))
    response = alice.post("/v1/datasets", json={"name": "one case", "uri": str(single)})
    assert response.status_code == 422 and "at least 2" in response.json()["detail"]

    not_a_dataset = stack.data_root / "just_a_folder"
    not_a_dataset.mkdir(exist_ok=True)
    response = alice.post("/v1/datasets", json={"name": "empty", "uri": str(not_a_dataset)})
    assert response.status_code == 422 and "dataset.json" in response.json()["detail"]

    wrong_format = alice.post("/v1/datasets", json={"name": "x", "uri": str(dataset_dir), "format": "msd"})
    assert wrong_format.status_code == 422 and "nnunet" in wrong_format.json()["detail"]

    a_file = alice.post("/v1/datasets", json={"name": "x", "uri": str(dataset_dir / "dataset.json")})
    assert a_file.status_code == 422 and "is a file" in a_file.json()["detail"]

    typo = alice.post("/v1/datasets", json={"name": "x", "uri": str(dataset_dir), "modalty": "MR"})
    assert typo.status_code == 422 and "modalty" in typo.json()["detail"]
    shutil.rmtree(broken)


def test_datasets_belong_to_their_owner(alice: httpx.Client, bob: httpx.Client, dataset_dir: Path) -> None:
    mine = alice.post("/v1/datasets", json={"name": "mine", "uri": str(dataset_dir)}).json()
    assert bob.get(f"/v1/datasets/{mine['id']}").status_code == 404
    assert mine["id"] not in {d["id"] for d in bob.get("/v1/datasets", params={"limit": 500}).json()["items"]}
    listed = alice.get("/v1/datasets", params={"limit": 1}).json()
    assert listed["total"] >= 1 and len(listed["items"]) == 1
