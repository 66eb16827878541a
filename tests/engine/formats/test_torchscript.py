"""TorchScript archives: read by a restricted unpickler and matched by signature; torch.jit.load never runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnrank.engine.errors import UnknownArchitectureError, UnsafeCheckpointError
from bnrank.engine.fitting import load_checkpoint

from . import makers as mk


@pytest.fixture(autouse=True)
def no_jit_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call of torch.jit.load on an archive under test fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called on an uploaded archive")

    monkeypatch.setattr(torch.jit, "load", refuse)


def test_traced_unet3d_is_recognised_and_loaded_weight_for_weight(tmp_path: Path) -> None:
    path, original = mk.write_torchscript(tmp_path / "genesis.pt")
    model, report = load_checkpoint(path)
    assert report.format == "torchscript" and report.architecture == "unet3d"
    assert report.build_kwargs == {"in_channels": 1, "width": 4, "out_channels": 2}
    assert report.matched_fraction == 1.0 and not report.missing and not report.unexpected
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())


def test_archive_of_an_unknown_network_is_refused_saying_what_to_upload(tmp_path: Path) -> None:
    path = mk.foreign_torchscript(tmp_path / "foreign.pt")
    with pytest.raises(UnknownArchitectureError, match="match no registered architecture") as caught:
        load_checkpoint(path)
    assert "closest" not in str(caught.value)  # 0 % shared names say nothing about the file
    assert "export it to ONNX" in str(caught.value)


def test_archive_whose_code_would_write_a_file_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = mk.torchscript_with_writing_code(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"data\.pkl names (__builtin__|builtins)\.exec"):
        load_checkpoint(path)
    assert not marker.exists()
