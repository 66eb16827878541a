"""Sizes bounded before they are allocated: zip and legacy checkpoints, network_defs, NIfTI headers, budgets.

Each test makes the engine meet a file or description that claims far more than it contains, and checks
the refusal comes first: the expensive call (torch.load, a network constructor, reading voxels) is patched
to fail the test if it is reached.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import inspect
import pickle
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks import nets

from bnrank.engine.architectures import architecture_from_network_def, build_model
from bnrank.engine.architectures.monai_nets import ALLOWED_CLASSES
from bnrank.engine.architectures.sizing import DEFAULT_MAX_PARAMETERS, estimate_parameters
from bnrank.engine.budget_limits import check_step_memory, max_batch_size, step_memory_bytes
from bnrank.engine.checkpoints import read_state_dict
from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
from bnrank.engine.data.checks import check_case
from bnrank.engine.data.layouts import Case
from bnrank.engine.errors import (
    CheckpointTooLargeError,
    CorruptCheckpointError,
    DatasetError,
    LimitExceededError,
    NetworkDefError,
    NetworkTooLargeError,
)
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.formats import legacy, pickles, torch_zip

try:  # imported as a package when tests/ gains __init__.py files, as a rootdir module otherwise
    from tests.engine.volumes import write_nnunet_dataset
except ModuleNotFoundError:
    from volumes import write_nnunet_dataset  # type: ignore[no-redef]

MiB = 1024**2
# The package exports a function with the module's name, so attribute access would find the function.
preprocess_module = importlib.import_module("bnrank.engine.data.preprocess")


def _no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load ran on a file that should have been refused first")

    monkeypatch.setattr(pickles.torch, "load", refuse)


def _small_state() -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": torch.randn(4, 4) for i in range(5)}


# ------------------------------------------------------------------------------------- .pt zip archives


def _zip_bomb(path: Path, inflated: int) -> Path:
    """A real torch archive, re-packed deflated, plus one record of `inflated` zero bytes (a few KiB packed)."""
    plain = path.with_suffix(".plain")
    torch.save(_small_state(), plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        names = source.namelist()
        for name in names:
            target.writestr(name, source.read(name))
        prefix = names[0].split("/")[0]
        with target.open(f"{prefix}/data/99", "w", force_zip64=True) as record:
            chunk = bytes(MiB)
            for _ in range(inflated // MiB):
                record.write(chunk)
    plain.unlink()
    return path


def test_zip_that_inflates_is_refused_before_torch_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _zip_bomb(tmp_path / "bomb.pt", 256 * MiB)
    assert path.stat().st_size < MiB
    _no_torch_load(monkeypatch)
    with pytest.raises(CheckpointTooLargeError, match=r"inflates .*-fold") as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message.startswith("bomb.pt:") and str(tmp_path) not in message


def test_zip_above_the_byte_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(MiB // 4)}, path)  # 1 MiB stored uncompressed, as torch.save does
    state, _ = read_state_dict(path)  # the default limit admits it
    assert state["w"].numel() == MiB // 4
    _no_torch_load(monkeypatch)
    with pytest.raises(CheckpointTooLargeError, match=r"decompresses to 1\.0 MiB, above the 0\.5 MiB limit"):
        read_state_dict(path, max_bytes=MiB // 2)


def test_zip_with_too_many_entries_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "many.pt"
    torch.save(_small_state(), path)
    _no_torch_load(monkeypatch)

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the central directory was parsed before its entry count was judged")

    monkeypatch.setattr(torch_zip.zipfile, "ZipFile", no_parse)
    with pytest.raises(CheckpointTooLargeError, match="entries, more than the 3 allowed"):
        torch_zip.check_torch_zip(path, max_entries=3)


def test_expanded_tensor_is_refused_before_anything_touches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One stored number viewed as 2³¹ (stride 0): tiny on disk, 8 GiB for anything that reads it."""
    path = tmp_path / "expanded.pt"
    torch.save({"w": torch.zeros(1).expand(2**31)}, path)
    assert path.stat().st_size < 64 * 1024

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the expanded tensor was computed on")

    monkeypatch.setattr(torch, "isfinite", refuse)
    with pytest.raises(CheckpointTooLargeError, match=r"tensors' shapes add up to 8\.0 GiB"):
        read_state_dict(path)


# ------------------------------------------------------------------------------------ legacy checkpoints


class _Declared:
    """Pickles as a legacy storage reference, with whatever element count the test wants to claim."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


def _legacy_file(path: Path, numel: int) -> Path:
    """The legacy layout torch.load reads: magic, protocol, sys info, the object, the storage keys."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if isinstance(obj, _Declared):
                return ("storage", torch.FloatStorage, "0", "cpu", obj.numel, None)
            return None

    with path.open("wb") as handle:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        Pickler(handle, protocol=2).dump({"w": _Declared(numel)})
        pickle.dump(["0"], handle, protocol=2)
        handle.write(b"\0" * 16)
    return path


def test_legacy_checkpoint_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(_small_state(), path, _use_new_zipfile_serialization=False)
    assert legacy.check_legacy_torch(path) == 5 * 16 * 4
    state, meta = read_state_dict(path)
    assert meta["format"] == "torch" and set(state) == set(_small_state())


def test_legacy_storage_larger_than_the_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _legacy_file(tmp_path / "claims.pth", numel=10**10)  # 40 GB declared in a few hundred bytes
    _no_torch_load(monkeypatch)
    with pytest.raises(CheckpointTooLargeError, match=r"declares 37\.3 GiB of tensor data but the file is"):
        read_state_dict(path)


def test_legacy_pickle_with_a_lying_length_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lying.pth"
    path.write_bytes(b"\x80\x02" + b"\x8e" + (10**11).to_bytes(8, "little") + b"x" * 64)  # BINBYTES8 of 100 GB
    _no_torch_load(monkeypatch)
    with pytest.raises(CorruptCheckpointError, match="asks for 100,000,000,000 bytes"):
        read_state_dict(path)


# ---------------------------------------------------------------------------------------- network_defs


def _built_count(class_name: str, kwargs: dict) -> int:
    """Built on the CPU: some constructors (DynUNet's weight init) are far slower on the meta device."""
    model = getattr(nets, class_name)(**kwargs)
    return sum(p.numel() for p in model.parameters())


SIZED_DEFS = [
    ("UNet", {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 2, "norm": "batch"}),
    ("UNet", {"channels": (32, 64, 128, 256, 512), "strides": (2, 2, 2, 2), "kernel_size": 5}),
    ("BasicUNet", {}),
    ("BasicUNet", {"features": (16, 16, 32, 64, 128, 16)}),
    ("DynUNet", {"kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2]}),
    (
        "DynUNet",
        {
            "kernel_size": [[3, 3, 1], 3, 3],
            "strides": [1, 2, 2],
            "upsample_kernel_size": [2, 2],
            "filters": [16, 32, 64],
            "res_block": True,
            "deep_supervision": True,
        },
    ),
    ("SegResNet", {}),
    ("SegResNet", {"init_filters": 16, "upsample_mode": "deconv"}),
    ("AttentionUnet", {"channels": (16, 32, 64, 128), "strides": (2, 2, 2)}),
    ("VNet", {}),
    ("UNETR", {"img_size": (96, 96, 96)}),
    ("SwinUNETR", {"feature_size": 48}),
]


@pytest.mark.parametrize(("class_name", "kwargs"), SIZED_DEFS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(SIZED_DEFS)])
def test_parameter_estimate_matches_the_built_network(class_name: str, kwargs: dict) -> None:
    if class_name not in ALLOWED_CLASSES:
        pytest.skip(f"this MONAI has no {class_name}")
    full = {"in_channels": 2, "out_channels": 3, **kwargs}
    if "spatial_dims" in inspect.signature(getattr(nets, class_name)).parameters:
        full["spatial_dims"] = 3
    try:
        real = _built_count(class_name, full)
    except Exception as exc:  # UNETR / SwinUNETR need einops, an optional MONAI dependency
        pytest.skip(f"{class_name} cannot be built here: {type(exc).__name__}")
    assert 0.9 * real <= estimate_parameters(class_name, full) <= 1.1 * real


def test_huge_network_def_is_refused_without_building(monkeypatch: pytest.MonkeyPatch) -> None:
    real_unet = nets.UNet

    @functools.wraps(real_unet)  # keeps the signature, which the builder inspects
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was built")

    monkeypatch.setattr(nets, "UNet", refuse)
    huge = {"_target_": "UNet", "channels": [100_000, 200_000], "strides": [2], "norm": "batch"}
    started = time.perf_counter()
    with pytest.raises(NetworkTooLargeError) as caught:
        architecture_from_network_def(huge)
    assert time.perf_counter() - started < 1.0
    message = str(caught.value)
    estimate = int(re.search(r"about ([\d,]+) parameters", message)[1].replace(",", ""))
    assert estimate > 5 * 10**11 and f"limit of {DEFAULT_MAX_PARAMETERS:,}" in message


def test_network_def_cap_is_a_parameter(tmp_path: Path) -> None:
    defn = {"_target_": "UNet", "channels": [8, 16, 32], "strides": [2, 2], "norm": "batch"}
    assert architecture_from_network_def(defn).build(in_channels=1, out_channels=2) is not None
    with pytest.raises(NetworkTooLargeError, match="limit of 1,000"):
        architecture_from_network_def(defn, max_parameters=1000)
    path = tmp_path / "w.pt"
    torch.save(architecture_from_network_def(defn).build(in_channels=1, out_channels=2).state_dict(), path)
    with pytest.raises(NetworkTooLargeError):
        load_checkpoint(path, network_def=defn, max_parameters=1000)


def test_network_def_that_cannot_be_sized_is_refused() -> None:
    defn = {"_target_": "UNet", "channels": [8, "wide"], "strides": [2], "norm": "batch"}
    with pytest.raises(NetworkDefError, match="channels must be"):
        architecture_from_network_def(defn)


def test_registered_architecture_is_counted_before_the_real_build(tmp_path: Path) -> None:
    path = tmp_path / "unet3d.pt"
    torch.save(build_model("unet3d", width=4, in_channels=1, out_channels=2).state_dict(), path)
    load_checkpoint(path)  # fits the default cap
    with pytest.raises(CheckpointTooLargeError, match="parameters, above the limit of 1,000"):
        load_checkpoint(path, max_parameters=1000)


# -------------------------------------------------------------------------------------- NIfTI headers


def _lying_nifti(path: Path, shape: tuple[int, ...], dtype: type = np.float32) -> Path:
    """A .nii.gz with a valid header claiming `shape` but only a kilobyte of voxel data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    return path


def test_nifti_header_claiming_a_huge_volume_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _lying_nifti(tmp_path / "imagesTr" / "bomb_0000.nii.gz", (1024, 1024, 1024))
    label = _lying_nifti(tmp_path / "labelsTr" / "bomb.nii.gz", (1024, 1024, 1024), np.uint8)
    assert image.stat().st_size < 4096

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse)
    problems = check_case(Case("bomb", (image,), label), tmp_path, {"background": 0, "x": 1}, 1)
    assert len(problems) == 1
    message = problems[0].message
    assert "imagesTr/bomb_0000.nii.gz is refused" in message
    assert "(1024,1024,1024)" in message and "4.0 GiB" in message and "2.0 GiB limit per volume" in message
    assert str(tmp_path) not in message


def test_dataset_keeps_good_cases_and_names_the_bomb(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=3, shape=(12, 12, 12))
    _lying_nifti(root / "imagesTr" / "case_001_0000.nii.gz", (128, 128, 128))
    dataset = open_dataset(root, max_volume_bytes=MiB)
    assert [p.case_id for p in dataset.problems] == ["case_001"]
    assert "8.0 MiB once decompressed, above the 1.0 MiB limit" in dataset.problems[0].message
    assert len(dataset.cases) == 2


def test_preprocessing_refuses_a_spacing_that_would_explode_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=(12, 12, 12))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("resampling ran")

    monkeypatch.setattr(preprocess_module, "Spacingd", refuse)
    config = PreprocessConfig(spacing=(0.01, 0.01, 0.01))  # 1 mm data at 0.01 mm: a million times the voxels
    with pytest.raises(DatasetError, match=r"resampled to spacing \(0\.01, 0\.01, 0\.01\) it would take 12\.9 GiB"):
        preprocess(open_dataset(root), config, cache_root=tmp_path / "cache")


def test_preprocessing_refuses_a_file_swapped_for_a_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=(12, 12, 12))
    dataset = open_dataset(root)  # checked while the files were good
    _lying_nifti(root / "imagesTr" / "case_000_0000.nii.gz", (1024, 1024, 1024))

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse)
    with pytest.raises(DatasetError, match=r"case_000_0000\.nii\.gz would take 4\.0 GiB to read"):
        preprocess(dataset, PreprocessConfig(spacing=(1.0, 1.0, 1.0)), cache_root=tmp_path / "cache")


# ------------------------------------------------------------------------------------ training budgets


def test_step_memory_grows_with_patch_batch_and_width() -> None:
    base = step_memory_bytes(32, 2)
    assert step_memory_bytes(64, 2) > base and step_memory_bytes(32, 4) == pytest.approx(2 * base, rel=1e-6)
    assert step_memory_bytes(32, 2, level_channels=(128, 256)) > step_memory_bytes(32, 2, level_channels=(64, 128))
    assert step_memory_bytes((32, 32, 64), 1) == pytest.approx(step_memory_bytes(32, 2), rel=1e-6)
    assert step_memory_bytes(32, 2, n_parameters=1000) == base + 16_000


def test_budget_the_schema_once_admitted_is_refused_with_what_fits() -> None:
    with pytest.raises(LimitExceededError, match=r"patch_size 1024 × batch_size 256 needs about .* GiB"):
        check_step_memory(1024, 256, 80 * 1024**3)
    assert check_step_memory(32, 2, 8 * 1024**3) < 1024**3  # the default budget fits easily
    assert max_batch_size(96, 80 * 1024**3) >= 8
    with pytest.raises(LimitExceededError, match=r"at most batch_size \d+ fits"):
        check_step_memory(96, 256, 80 * 1024**3)


_MEASURE = """
import torch
from torch import nn
from monai.networks.nets.basic_unet import BasicUNet

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

torch.set_num_threads(1)
model = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, norm=("batch", {"affine": True}))
for module in model.modules():
    for p in module.parameters(recurse=False):
        p.requires_grad_(isinstance(module, nn.modules.batchnorm._BatchNorm))
model(torch.randn(2, 1, 16, 16, 16)).sum().backward()  # load kernels and allocator pools first
x, y = torch.randn(2, 1, 32, 32, 32), torch.randint(0, 2, (2, 32, 32, 32))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size
before = status("VmRSS")
nn.functional.cross_entropy(model(x), y).backward()
print(status("VmHWM") - before)
"""


def test_step_memory_estimate_is_the_right_order_against_a_measured_step() -> None:
    """One BN-only step of MONAI's BasicUNet on CPU, peak RSS growth measured in a fresh process."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc to measure a peak")
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=300, check=True
    )
    measured = int(result.stdout.strip().splitlines()[-1])
    estimate = step_memory_bytes(32, 2, level_channels=(32, 32, 64, 128, 256))
    assert measured / 3 <= estimate <= measured * 3, (estimate, measured)
