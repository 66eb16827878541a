"""Checkpoint upload (streamed, validated, deduplicated, size-limited), listing, γ, deletion, ownership."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import torch
from sqlalchemy import func, select

from service.core.models import Checkpoint
from tests.service.conftest import Stack, make_checkpoint, upload


class RunsCode:
    """Unpickling this runs a shell command: what a malicious 'checkpoint' would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _tmp_files(stack: Stack) -> list[str]:
    return stack.leftovers()


def _rows(stack: Stack, **where: str) -> int:
    with stack.db.session() as session:
        query = select(func.count()).select_from(Checkpoint)
        for column, value in where.items():
            query = query.where(getattr(Checkpoint, column) == value)
        return session.scalar(query) or 0


@pytest.fixture
def uploaded(alice: httpx.Client, tmp_path: Path) -> Iterator[dict]:
    """A fresh checkpoint of alice's (unique bytes), deleted afterwards if still there."""
    path = make_checkpoint(tmp_path / "fresh.safetensors", seed=int.from_bytes(os.urandom(3), "big"))
    response = upload(alice, path, modality="MR")
    assert response.status_code == 201, response.text
    body = response.json()
    yield body
    alice.delete(f"/v1/checkpoints/{body['id']}")


def test_upload_validates_and_records_the_checkpoint(uploaded: dict, stack: Stack) -> None:
    assert uploaded["id"].startswith("ck_")
    assert uploaded["format"] == "safetensors"
    assert uploaded["architecture"] == "unet3d"
    assert uploaded["build_kwargs"] == {"in_channels": 1, "out_channels": 3, "width": 4}
    assert (uploaded["in_channels"], uploaded["out_channels"], uploaded["modality"]) == (1, 3, "MR")
    assert uploaded["n_parameters"] > 0 and uploaded["n_bn_channels"] > 0
    assert uploaded["load_report"]["matched_fraction"] == 1.0
    assert uploaded["gamma_summary"]["count"] == uploaded["n_bn_channels"]
    assert stack.stored_size(uploaded["sha256"]) == uploaded["size"]


def test_same_bytes_again_answer_200_with_the_same_checkpoint(
    alice: httpx.Client, bob: httpx.Client, uploaded: dict, tmp_path: Path, stack: Stack
) -> None:
    path = make_checkpoint(tmp_path / "x.safetensors", seed=0)
    first = upload(alice, path)
    again = upload(alice, path, name="another name")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    # Another owner uploading the same bytes gets a checkpoint of their own, sharing the blob.
    theirs = upload(bob, path)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert _rows(stack, sha256=first.json()["sha256"]) == 2


def test_gamma_of_the_raw_weights(alice: httpx.Client, uploaded: dict) -> None:
    gamma = alice.get(f"/v1/checkpoints/{uploaded['id']}/gamma").json()
    assert gamma["phase"] == "raw"
    assert sum(gamma["histogram"]["counts"]) == uploaded["n_bn_channels"]
    assert len(gamma["histogram"]["edges"]) == len(gamma["histogram"]["counts"]) + 1
    assert sum(layer["count"] for layer in gamma["layers"]) == uploaded["n_bn_channels"]
    # A fresh BatchNorm has γ = 1: every channel sits in the bin starting at 1.0.
    assert gamma["summary"]["mean"] == pytest.approx(1.0)


def test_list_filters_and_pages(alice: httpx.Client, uploaded: dict, tmp_path: Path) -> None:
    ct = upload(alice, make_checkpoint(tmp_path / "ct.safetensors", seed=77), modality="CT").json()
    try:
        everything = alice.get("/v1/checkpoints", params={"limit": 500}).json()
        assert {uploaded["id"], ct["id"]} <= {c["id"] for c in everything["items"]}
        mr = alice.get("/v1/checkpoints", params={"modality": "MR", "limit": 500}).json()
        assert uploaded["id"] in {c["id"] for c in mr["items"]} and ct["id"] not in {c["id"] for c in mr["items"]}
        assert alice.get("/v1/checkpoints", params={"architecture": "monai_unet"}).json()["total"] == 0
        page = alice.get("/v1/checkpoints", params={"limit": 1, "offset": 1}).json()
        assert (len(page["items"]), page["total"], page["limit"], page["offset"]) == (1, everything["total"], 1, 1)
        assert alice.get("/v1/checkpoints", params={"limit": 0}).status_code == 422
    finally:
        alice.delete(f"/v1/checkpoints/{ct['id']}")


def test_another_owner_gets_404_everywhere(bob: httpx.Client, uploaded: dict) -> None:
    for method, path in (
        ("GET", f"/v1/checkpoints/{uploaded['id']}"),
        ("GET", f"/v1/checkpoints/{uploaded['id']}/gamma"),
        ("DELETE", f"/v1/checkpoints/{uploaded['id']}"),
    ):
        response = bob.request(method, path)
        assert response.status_code == 404, (method, path)
        assert uploaded["id"] in response.json()["detail"]
    assert uploaded["id"] not in {c["id"] for c in bob.get("/v1/checkpoints").json()["items"]}


def test_delete_removes_row_and_unshared_blob(alice: httpx.Client, uploaded: dict, stack: Stack) -> None:
    assert stack.stored_size(uploaded["sha256"]) is not None
    assert alice.delete(f"/v1/checkpoints/{uploaded['id']}").status_code == 204
    assert alice.get(f"/v1/checkpoints/{uploaded['id']}").status_code == 404
    assert stack.stored_size(uploaded["sha256"]) is None


def _pickle_attacks(tmp_path: Path, marker: Path) -> dict[str, Path]:
    zipped = tmp_path / "evil.pt"
    torch.save({"state_dict": RunsCode(marker)}, zipped)
    legacy = tmp_path / "evil.pkl"
    legacy.write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    return {"torch zip": zipped, "legacy pickle": legacy}


def test_malicious_pickles_are_refused_without_running_code(alice: httpx.Client, tmp_path: Path, stack: Stack) -> None:
    marker = tmp_path / "code-ran"
    before = _rows(stack, owner="alice")
    for kind, path in _pickle_attacks(tmp_path, marker).items():
        response = upload(alice, path)
        assert response.status_code == 422, kind
        assert "code execution" in response.json()["detail"], kind
        assert not marker.exists(), f"{kind}: the pickle's code ran"
    assert _rows(stack, owner="alice") == before
    assert _tmp_files(stack) == []


@pytest.mark.parametrize(
    ("content", "fields", "expected"),
    [
        (b"this is not a checkpoint at all", {}, "neither a .safetensors file, an ONNX model nor a PyTorch checkpoint"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{}", {}, "safetensors"),
        (b"short", {}, "too short"),
        (None, {"architecture": "no_such_net"}, "unknown architecture"),
        (None, {"architecture": "medicalnet_resnet10"}, "matches only"),
        (None, {"modality": "PET-CT"}, "modality"),
        (None, {"surprise": "field"}, "unknown form field"),
    ],
)
def test_unusable_uploads_are_422_and_leave_nothing(
    alice: httpx.Client, tmp_path: Path, stack: Stack, content: bytes | None, fields: dict, expected: str
) -> None:
    path = tmp_path / "upload.bin"
    if content is None:
        make_checkpoint(path, seed=5)
    else:
        path.write_bytes(content)
    before = _rows(stack, owner="alice")
    response = upload(alice, path, **fields)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert _rows(stack, owner="alice") == before
    assert _tmp_files(stack) == []


def test_malformed_requests_are_422(alice: httpx.Client) -> None:
    no_file = alice.post("/v1/checkpoints", data={"name": "x"}, files={"other": ("a", b"b")})
    assert no_file.status_code == 422 and "'file'" in no_file.json()["detail"]
    not_multipart = alice.post("/v1/checkpoints", json={"name": "x"})
    assert not_multipart.status_code == 422 and "multipart" in not_multipart.json()["detail"]


def test_oversized_uploads_stop_with_413_and_leave_no_partial_file(
    alice: httpx.Client, stack: Stack, serve_app: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    limit = 64 * 1024
    small = stack.settings.model_copy(update={"max_upload_bytes": limit})
    path = make_checkpoint(tmp_path / "big.safetensors", seed=9)  # ~1.2 MB, well over the limit
    before = _rows(stack, owner="alice")
    with serve_app(small) as url:
        headers = dict(alice.headers)
        declared = upload(httpx.Client(base_url=url, headers=headers, timeout=30), path)
        assert declared.status_code == 413, declared.text
        assert str(limit) in declared.json()["detail"]

        # No Content-Length (chunked): the limit must be enforced while streaming.
        boundary = "bnrankboundary"

        def body() -> Iterator[bytes]:
            yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n').encode()
            data = path.read_bytes()
            for start in range(0, len(data), 16 * 1024):
                yield data[start : start + 16 * 1024]
            yield f"\r\n--{boundary}--\r\n".encode()

        chunked = httpx.post(
            f"{url}/v1/checkpoints",
            headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
            timeout=30,
        )
        assert chunked.status_code == 413, chunked.text
        # Under the limit the same server accepts an upload.
        tiny = tmp_path / "tiny.bin"
        tiny.write_bytes(b"x" * 100)
        assert upload(httpx.Client(base_url=url, headers=headers), tiny).status_code == 422
    assert _tmp_files(stack) == []
    assert _rows(stack, owner="alice") == before


def test_pytorch_files_in_containers_are_accepted(alice: httpx.Client, tmp_path: Path) -> None:
    """A plain torch.save of a wrapped, DataParallel-prefixed state dict: read with weights_only, unwrapped."""
    from bnrank.engine.architectures import build_model

    torch.manual_seed(11)
    state = {
        f"module.{k}": v for k, v in build_model("unet3d", in_channels=1, out_channels=3, width=4).state_dict().items()
    }
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    response = upload(alice, path, architecture="unet3d")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["format"], body["architecture"]) == ("torch", "unet3d")
    assert body["load_report"]["container"] == "state_dict"
    assert body["load_report"]["stripped_prefixes"] == ["module."]
    alice.delete(f"/v1/checkpoints/{body['id']}")


def test_a_network_without_normalisation_is_refused_at_upload(
    alice: httpx.Client, tmp_path: Path, stack: Stack
) -> None:
    """Norm-only ranking trains the γ/β after a normalisation: an InstanceNorm network (no BatchNorm) is accepted,
    one without any normalisation never gets a row, and the 422 says why."""
    import json

    from bnrank.engine.architectures import architecture_from_network_def
    from bnrank.engine.checkpoints import save_weights

    network_def = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [8, 16, 32],
        "strides": [2, 2],
        "norm": "instance",
    }
    instance = save_weights(architecture_from_network_def(network_def).build(), tmp_path / "instance_norm.safetensors")
    accepted = upload(alice, instance, network_def=json.dumps(network_def))
    assert accepted.status_code == 201, accepted.text
    assert alice.delete(f"/v1/checkpoints/{accepted.json()['id']}").status_code == 204

    bare = {**network_def, "norm": None}
    model = architecture_from_network_def(bare).build(require_norm=False)
    path = save_weights(model, tmp_path / "no_norm.safetensors")
    before = _rows(stack, owner="alice")
    response = upload(alice, path, network_def=json.dumps(bare))
    assert response.status_code == 422, response.text
    assert "has no normalisation layers (BatchNorm, InstanceNorm, GroupNorm or LayerNorm)" in response.json()["detail"]
    assert _rows(stack, owner="alice") == before
    assert _tmp_files(stack) == []
