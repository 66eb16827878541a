"""The formats people share through the REST upload: an nnU-Net model zip and checkpoint_final.pth, a zipped
MONAI bundle, a TorchScript archive; ranked beside a Models Genesis checkpoint; hostile variants refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from bnrank.cli.client import Client
from tests.engine.formats import makers as mk
from tests.service.conftest import TINY_BUDGET, key_of, make_checkpoint, upload, wait_job


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per format, in the layout its tools write (zips as a user would upload them)."""
    root = tmp_path_factory.mktemp("formats")
    folder, _ = mk.write_nnunet_folder(root / "results", seed=11)
    bundle = mk.write_bundle(root, mk.SEGRESNET_DEF, seed=11)
    return {
        "nnunet_zip": mk.zip_folder(folder.parent, root / "nnunet_model.zip", base=folder.parent.parent),
        "checkpoint_final": folder / "fold_0" / "checkpoint_final.pth",
        "bundle_zip": mk.zip_folder(bundle, root / "bundle.zip"),
        "torchscript": mk.write_torchscript(root / "traced.pt", seed=11)[0],
        "genesis": make_checkpoint(root / "genesis.safetensors", seed=12),
    }


@pytest.fixture(scope="module")
def uploaded(alice: httpx.Client, shared: dict[str, Path]) -> dict[str, dict[str, Any]]:
    bodies = {}
    for name, path in shared.items():
        response = upload(alice, path, name=f"formats-{name}")
        assert response.status_code in (200, 201), (name, response.text)
        bodies[name] = response.json()
    return bodies


def test_each_format_is_recognised_from_its_contents(uploaded: dict[str, dict[str, Any]]) -> None:
    for name in ("nnunet_zip", "checkpoint_final"):
        body = uploaded[name]
        assert (body["format"], body["architecture"]) == ("nnunet", "nnunet")
        assert body["build_kwargs"]["network_class_name"].endswith("PlainConvUNet")
        assert (body["in_channels"], body["out_channels"]) == (1, 3)
        assert body["load_report"]["source"]["defaults"]["spacing"] == [2.0, 1.5, 1.5]
    bundle = uploaded["bundle_zip"]
    assert bundle["format"] == "monai_bundle" and bundle["architecture"].startswith("monai:SegResNet@")
    assert bundle["load_report"]["source"]["network_def"]["_target_"] == "SegResNet"
    script = uploaded["torchscript"]
    assert (script["format"], script["architecture"]) == ("torchscript", "unet3d")
    assert all(b["load_report"]["matched_fraction"] == 1.0 for b in uploaded.values())


def _hostile(root: Path) -> dict[str, tuple[Path, int, str]]:
    marker = root / "ran"
    escape = mk.zip_with_entries(root / "escape.zip", {"m/plans.json": b"{}", "../../evil.sh": b"echo"})
    folder, _ = mk.write_nnunet_folder(root / "bad_plans", the_plans=mk.plans_naming("os.system"))
    return {
        "torchscript_code": (
            mk.torchscript_with_writing_code(root / "evil.pt", marker),
            422,
            "data.pkl names __builtin__.exec",
        ),
        "plans_os_system": (mk.zip_folder(folder, root / "bad_plans.zip"), 422, "nonlin 'os.system' is not allowed"),
        "reduce_payload": (
            mk.reduce_checkpoint(root / "checkpoint_final.pth", marker),
            422,
            "needs code execution to load (it names posix.system)",
        ),
        "escape": (escape, 422, "entry '../../evil.sh' points outside the archive"),
        "bomb": (mk.zip_bomb(root / "bomb.zip"), 413, "zip bomb"),
    }


def test_hostile_uploads_are_refused_and_nothing_runs(alice: httpx.Client, tmp_path: Path) -> None:
    for name, (path, status, message) in _hostile(tmp_path).items():
        response = upload(alice, path, name=f"hostile-{name}")
        assert response.status_code == status, (name, response.text)
        assert message in response.json()["detail"], (name, response.json())
    assert not (tmp_path / "ran").exists()


def test_mixed_pool_ranks_through_the_api(
    worker: Any, alice: httpx.Client, uploaded: dict[str, dict[str, Any]], dataset_id: str
) -> None:
    ids = [uploaded[n]["id"] for n in ("nnunet_zip", "bundle_zip", "torchscript", "genesis")]
    response = alice.post(
        "/v1/rankings", json={"dataset_id": dataset_id, "checkpoint_ids": ids, "budget": TINY_BUDGET, "seed": 0}
    )
    assert response.status_code == 202, response.text
    job = wait_job(alice, response.json()["id"], timeout_s=300)
    assert job["status"] == "succeeded", job
    entries = alice.get(f"/v1/rankings/{job['id']}").json()["entries"]
    assert all(e["status"] == "ok" for e in entries), [(e["name"], e["error"]) for e in entries]
    by_name = {e["name"]: e for e in entries}
    assert by_name["formats-nnunet_zip"]["architecture"] == "nnunet"
    assert by_name["formats-bundle_zip"]["architecture"].startswith("monai:SegResNet")
    controls = sorted(e["name"] for e in entries if e["is_control"])
    assert len(controls) == 3, controls  # one per architecture: nnunet, the bundle's SegResNet, unet3d
    assert any("nnunet" in c for c in controls) and any("SegResNet" in c for c in controls)


def test_remote_upload_sends_a_model_folder_as_a_zip(
    api: str, alice: httpx.Client, shared: dict[str, Path], tmp_path: Path
) -> None:
    """`bnrank remote upload FOLDER`: an unzipped nnU-Net model folder or MONAI bundle is zipped on the way,
    links left out, and the service recognises it as it would the user's own zip."""
    folder = tmp_path / "Dataset_model"
    shutil.copytree(shared["checkpoint_final"].parent.parent, folder)
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the service")
    (folder / "link_out").symlink_to(outside)
    bundle = mk.write_bundle(tmp_path, mk.SEGRESNET_DEF, seed=13)
    with Client(api, key_of(alice)) as client:
        nnunet = client.upload_checkpoint(folder, name="folder-nnunet")
        monai = client.upload_checkpoint(bundle, name="folder-bundle")
    assert (nnunet["format"], nnunet["architecture"]) == ("nnunet", "nnunet")
    assert monai["format"] == "monai_bundle" and monai["architecture"].startswith("monai:SegResNet@")
