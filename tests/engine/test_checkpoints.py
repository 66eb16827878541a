"""Checkpoint I/O: safe reading, unwrapping, recognition, load reports and refusals."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import read_state_dict, save_weights
from bnrank.engine.errors import (
    ArchitectureMismatchError,
    CorruptCheckpointError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
)
from bnrank.engine.fitting import load_checkpoint

NARROW = {"in_channels": 1, "out_channels": 3, "width": 4}


@pytest.fixture
def unet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("unet3d", **NARROW).state_dict()


def test_safetensors_round_trip_recognises_architecture(tmp_path: Path, unet_state) -> None:
    path = tmp_path / "w.safetensors"
    save_file(unet_state, str(path))
    model, report = load_checkpoint(path, out_channels=3)
    assert report.architecture == "unet3d"
    assert report.build_kwargs["width"] == 4
    assert report.format == "safetensors"
    assert report.matched_fraction == pytest.approx(1.0)
    assert not report.missing and not report.unexpected and not report.shape_mismatched
    for key, value in model.state_dict().items():
        assert torch.equal(value, unet_state[key]), key


@pytest.mark.parametrize("container", [None, "state_dict", "model", "net"])
def test_torch_containers_and_module_prefix(tmp_path: Path, unet_state, container) -> None:
    """Models Genesis and MedicalNet releases were saved from DataParallel: `module.` keys in a dict."""
    wrapped = {f"module.{k}": v for k, v in unet_state.items()}
    obj = wrapped if container is None else {container: wrapped, "epoch": 12, "optimizer_name": "adam"}
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    model, report = load_checkpoint(path, out_channels=3)
    assert report.stripped_prefixes == ["module."]
    assert report.container == container
    assert torch.equal(
        model.state_dict()["down_tr64.ops.0.conv1.weight"], unet_state["down_tr64.ops.0.conv1.weight"]
    )


def test_compiled_prefix_is_stripped(tmp_path: Path, unet_state) -> None:
    path = tmp_path / "w.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in unet_state.items()}, path)
    _, report = load_checkpoint(path, out_channels=3)
    assert report.stripped_prefixes == ["_orig_mod."]


def test_head_with_other_class_count_is_reinitialised(tmp_path: Path, unet_state) -> None:
    path = tmp_path / "w.safetensors"
    save_file(unet_state, str(path))
    model, report = load_checkpoint(path, out_channels=5)
    assert sorted(report.head_reinitialised) == ["out_tr.final_conv.bias", "out_tr.final_conv.weight"]
    assert model.state_dict()["out_tr.final_conv.weight"].shape[0] == 5
    assert report.matched_fraction == pytest.approx(1.0)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/bnrank-pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = Path("/tmp/bnrank-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError, match="code execution"):
        read_state_dict(path)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(Exploit(), protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(legacy)
    assert not marker.exists()


def test_truncated_torch_file(tmp_path: Path, unet_state) -> None:
    path = tmp_path / "w.pt"
    torch.save(unet_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        read_state_dict(path)


def test_safetensors_with_lying_header(tmp_path: Path, unet_state) -> None:
    path = tmp_path / "w.safetensors"
    save_file(unet_state, str(path))
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", n + 10_000_000) + data[8:])  # header length beyond the file
    with pytest.raises(CorruptCheckpointError, match="header claims"):
        read_state_dict(path)
    path.write_bytes(data[: len(data) - 4096])  # offsets beyond the data section
    with pytest.raises(CorruptCheckpointError, match="points at bytes"):
        read_state_dict(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights at all")
    with pytest.raises(CorruptCheckpointError, match="neither"):
        read_state_dict(path)


def test_nan_weights_are_refused(tmp_path: Path, unet_state) -> None:
    unet_state["down_tr128.ops.0.conv1.weight"][0, 0, 0, 0, 0] = float("nan")
    path = tmp_path / "w.safetensors"
    save_file(unet_state, str(path))
    with pytest.raises(CorruptCheckpointError, match="NaN"):
        read_state_dict(path)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, str(path))
    with pytest.raises(UnknownArchitectureError, match="match no registered architecture"):
        load_checkpoint(path, out_channels=2)
    with pytest.raises(UnknownArchitectureError, match="unet3d"):
        load_checkpoint(path, out_channels=2, architecture="resnet9000")


def test_wrong_shape_checkpoint_is_refused_with_report(tmp_path: Path) -> None:
    """A width-8 file forced onto a width-4 build matches (almost) nothing: refused, report attached."""
    path = tmp_path / "w.safetensors"
    save_weights(build_model("unet3d", in_channels=1, out_channels=3, width=8), path)
    with pytest.raises(ArchitectureMismatchError) as info:
        load_checkpoint(path, out_channels=3, architecture=build_arch_with_width(4))
    assert "matches only" in str(info.value)
    assert info.value.report.shape_mismatched


def build_arch_with_width(width: int):
    """The registered unet3d, pinned to a width, as a user declaring a different model would."""
    from dataclasses import replace

    from bnrank.engine.architectures import get_architecture

    arch = get_architecture("unet3d")
    return replace(arch, infer=lambda shapes: {"width": width})


def test_save_weights_is_atomic_and_loadable(tmp_path: Path) -> None:
    model = build_model("unet3d", **NARROW)
    path = save_weights(model, tmp_path / "out" / "w.safetensors", {"note": "hello"})
    assert not list(path.parent.glob("*.partial"))
    state, meta = read_state_dict(path)
    assert meta["format"] == "safetensors"
    assert set(state) == set(model.state_dict())
