"""Checkpoint inspection in a child process: same answer as in-process, and limits that cost only the child."""

from __future__ import annotations

import collections
import io
import multiprocessing
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch

from bnrank.engine.architectures import build_model
from bnrank.engine.errors import (
    ArchitectureMismatchError,
    CorruptCheckpointError,
    InspectionLimitError,
    NetworkTooLargeError,
    UnknownArchitectureError,
)
from bnrank.engine.inspect_isolated import (
    CheckpointSummary,
    inspect_checkpoint_isolated,
    memory_limit_for,
    summarise_checkpoint,
)


@pytest.fixture(scope="module")
def unet3d_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "unet3d.pt"
    torch.save(build_model("unet3d", width=4, in_channels=1, out_channels=3).state_dict(), path)
    return path


def _no_children_left() -> bool:
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


def test_isolated_summary_equals_the_in_process_one(unet3d_file: Path) -> None:
    summary = inspect_checkpoint_isolated(unet3d_file)
    assert isinstance(summary, CheckpointSummary)
    assert summary == summarise_checkpoint(unet3d_file)
    assert summary.architecture == "unet3d" and summary.format == "torch"
    assert (summary.in_channels, summary.out_channels) == (1, 3)
    assert summary.n_parameters > 0 and summary.n_bn_channels > 0
    assert summary.load_report["matched_fraction"] == 1.0 and summary.gamma["summary"]["count"] > 0
    assert pickle.loads(pickle.dumps(summary)) == summary
    assert _no_children_left()


def test_engine_refusals_cross_the_process_boundary(tmp_path: Path, unet3d_file: Path) -> None:
    junk = tmp_path / "notes.pt"
    junk.write_text("these are not weights at all")
    with pytest.raises(CorruptCheckpointError, match=r"^notes\.pt: neither") as caught:
        inspect_checkpoint_isolated(junk)
    assert str(tmp_path) not in str(caught.value)
    with pytest.raises(ArchitectureMismatchError) as mismatch:
        inspect_checkpoint_isolated(unet3d_file, architecture="monai_unet")
    assert isinstance(mismatch.value.report, dict) and mismatch.value.report["architecture"] == "monai_unet"
    huge = {"_target_": "UNet", "channels": [100_000, 200_000], "strides": [2], "norm": "batch"}
    with pytest.raises(NetworkTooLargeError, match="parameters, above the limit"):
        inspect_checkpoint_isolated(unet3d_file, network_def=huge)


def test_time_limit_stops_the_child(unet3d_file: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InspectionLimitError, match=r"unet3d\.pt: inspection took longer than 0\.001 s"):
        inspect_checkpoint_isolated(unet3d_file, time_limit_s=0.001)
    assert time.monotonic() - started < 10
    assert _no_children_left()


def test_memory_limit_derived_from_the_size_limit_admits_a_genuine_file(unet3d_file: Path) -> None:
    limit = memory_limit_for(unet3d_file.stat().st_size)
    assert inspect_checkpoint_isolated(unet3d_file, memory_limit_mib=limit).architecture == "unet3d"


def test_memory_limit_costs_the_child_not_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "heavy.pt"
    torch.save({"w": torch.zeros(32 * 1024**2 // 4)}, path)  # 32 MiB of tensor data
    with pytest.raises(InspectionLimitError, match=r"heavy\.pt: inspection ran out of the 8 MiB memory limit"):
        inspect_checkpoint_isolated(path, memory_limit_mib=8)
    assert _no_children_left()


class _Storage:
    """Pickles as a reference to the archive's storage record "0" of `numel` floats."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


class _Tensor:
    """Pickles as torch's own tensor rebuild call over a `_Storage`, as torch.save writes it."""

    def __init__(self, numel: int) -> None:
        self.numel = numel

    def __reduce__(self) -> tuple:
        args = (_Storage(self.numel), 0, (self.numel,), (1,), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


def _heavy_archive(path: Path, numel: int) -> Path:
    """A genuine-looking torch archive with one float tensor of `numel`, written without holding its bytes."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
            return None

    small = path.with_suffix(".small")
    torch.save({"w": torch.zeros(4)}, small)
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": _Tensor(numel)})
    with zipfile.ZipFile(small) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            if name.endswith("/data/0"):
                with target.open(name, "w", force_zip64=True) as record:
                    for _ in range(numel * 4 // 2**20):
                        record.write(bytes(2**20))
            elif name.endswith("/data.pkl"):
                target.writestr(name, buffer.getvalue())
            else:
                target.writestr(name, source.read(name))
    return path


def _peak_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to measure a peak")
def test_a_heavy_file_costs_the_child_not_the_caller(tmp_path: Path) -> None:
    path = _heavy_archive(tmp_path / "heavy.pt", 64 * 2**20)  # torch.load reads all 256 MiB of the record
    Path("/proc/self/clear_refs").write_text("5")  # reset this process's peak to its current size
    before = _peak_rss()
    with pytest.raises(InspectionLimitError, match="ran out of the 64 MiB memory limit"):
        inspect_checkpoint_isolated(path, memory_limit_mib=64)
    with pytest.raises(UnknownArchitectureError):  # with room, the child reads it all, then finds no network
        inspect_checkpoint_isolated(path, memory_limit_mib=1024)
    assert _peak_rss() - before < 64 * 2**20
