"""Datasets: both layouts open, each kind of bad case is named and dropped, preprocessing is cached."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bnrank.engine.data import (
    Dataset,
    PreprocessConfig,
    channel_modality,
    default_cache_root,
    open_dataset,
    preprocess,
)
from bnrank.engine.errors import DatasetError

try:  # imported as a package when tests/ gains __init__.py files, as a rootdir module otherwise
    from tests.engine.volumes import (
        affine_for,
        truncate_file,
        write_msd_dataset,
        write_nnunet_dataset,
        write_volume,
    )
except ModuleNotFoundError:
    from volumes import (  # type: ignore[no-redef]
        affine_for,
        truncate_file,
        write_msd_dataset,
        write_nnunet_dataset,
        write_volume,
    )

# The package exports a function with the module's name, so attribute access would find the function.
preprocess_module = importlib.import_module("bnrank.engine.data.preprocess")

SHAPE = (20, 20, 20)


@pytest.fixture
def nnunet(tmp_path: Path) -> Path:
    return write_nnunet_dataset(tmp_path / "nnunet", n_cases=4, shape=SHAPE)


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    return write_msd_dataset(tmp_path / "msd", n_cases=4, shape=SHAPE)


def _problem_for(dataset: Dataset, case_id: str) -> str:
    messages = [p.message for p in dataset.problems if p.case_id == case_id]
    assert messages, f"no problem reported for {case_id}: {dataset.problems}"
    return messages[0]


def _ids(dataset: Dataset) -> list[str]:
    return [c.case_id for c in dataset.cases]


# --- layouts ---------------------------------------------------------------------------------


def test_nnunet_dataset_opens(nnunet: Path) -> None:
    ds = open_dataset(nnunet)
    assert ds.layout == "nnunet"
    assert ds.name == "Dataset001_Synthetic"
    assert ds.channel_names == ["T1"]
    assert ds.modality == "MR"
    assert ds.labels == {"background": 0, "tumor": 1, "edema": 2}
    assert ds.n_classes == 3
    assert _ids(ds) == ["case_000", "case_001", "case_002", "case_003"]
    assert ds.problems == []
    case = ds.cases[0]
    assert case.images == ((nnunet / "imagesTr" / "case_000_0000.nii.gz").resolve(),)
    assert case.label == (nnunet / "labelsTr" / "case_000.nii.gz").resolve()


def test_nnunet_multichannel_lists_one_path_per_channel(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=SHAPE, n_channels=2, modality="CT")
    ds = open_dataset(root)
    assert ds.channel_names == ["CT_phase0", "CT_phase1"]
    assert ds.modality == "CT"
    assert [p.name for p in ds.cases[0].images] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]


def test_msd_dataset_opens_with_4d_images(tmp_path: Path) -> None:
    root = write_msd_dataset(tmp_path / "msd", n_cases=3, shape=SHAPE, n_labels=3, n_channels=3)
    ds = open_dataset(root)
    assert ds.layout == "msd"
    assert ds.channel_names == ["FLAIR", "T1w", "t1gd"]
    assert ds.modality == "MR"
    # MSD maps value -> name; the Dataset always maps name -> value.
    assert ds.labels == {"background": 0, "tumor": 1, "edema": 2, "necrosis": 3}
    assert len(ds.cases) == 3 and all(len(c.images) == 1 for c in ds.cases)
    assert ds.problems == []


def test_msd_single_channel_ct(tmp_path: Path) -> None:
    ds = open_dataset(write_msd_dataset(tmp_path / "msd", n_cases=2, shape=SHAPE, modality="CT"))
    assert ds.modality == "CT" and ds.channel_names == ["CT"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("CT", "CT"),
        ("ct", "CT"),
        ("non-contrast CT", "CT"),
        ("MRI", "MR"),
        ("MR", "MR"),
        ("T1", "MR"),
        ("T1w", "MR"),
        ("t1gd", "MR"),
        ("T2", "MR"),
        ("FLAIR", "MR"),
        ("ADC", "MR"),
        ("PET", "other"),
        ("noNorm", "other"),
        ("ACTIVITY", "other"),
    ],
)
def test_channel_modality(name: str, kind: str) -> None:
    assert channel_modality(name) == kind


def test_mixed_channels_make_modality_other(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=1, shape=SHAPE, n_channels=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "PET"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert open_dataset(root).modality == "other"


def test_missing_dataset_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"dataset\.json"):
        open_dataset(tmp_path / "empty")


def test_unparseable_dataset_json_names_the_file(nnunet: Path) -> None:
    (nnunet / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"dataset\.json.*JSON"):
        open_dataset(nnunet)


def test_unknown_layout_is_refused(nnunet: Path) -> None:
    (nnunet / "dataset.json").write_text(json.dumps({"name": "x", "labels": {"background": 0}}))
    with pytest.raises(DatasetError, match="neither nnU-Net"):
        open_dataset(nnunet)


def test_region_labels_are_refused_clearly(nnunet: Path) -> None:
    meta = json.loads((nnunet / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    (nnunet / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="region"):
        open_dataset(nnunet)


# --- per-case checks ------------------------------------------------------------------------


def test_corrupt_gzip_case_is_named_and_others_kept(nnunet: Path) -> None:
    truncate_file(nnunet / "imagesTr" / "case_001_0000.nii.gz", keep=0.6)
    ds = open_dataset(nnunet)
    assert _ids(ds) == ["case_000", "case_002", "case_003"]
    assert "unreadable file imagesTr/case_001_0000.nii.gz" in _problem_for(ds, "case_001")


def test_truncated_uncompressed_nifti_is_unreadable(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=SHAPE)
    for path in [*root.glob("imagesTr/*.nii.gz"), *root.glob("labelsTr/*.nii.gz")]:
        image = nib.load(str(path))
        write_volume(path.with_name(path.name[: -len(".gz")]), np.asanyarray(image.dataobj), image.affine)
        path.unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta["file_ending"] = ".nii"
    (root / "dataset.json").write_text(json.dumps(meta))
    truncate_file(root / "labelsTr" / "case_000.nii", keep=0.5)
    ds = open_dataset(root)
    assert _ids(ds) == ["case_001"]
    assert "unreadable" in _problem_for(ds, "case_000")


def test_garbage_file_is_unreadable(nnunet: Path) -> None:
    (nnunet / "labelsTr" / "case_002.nii.gz").write_bytes(b"this is not a nifti file at all")
    ds = open_dataset(nnunet)
    assert "unreadable" in _problem_for(ds, "case_002")
    assert len(ds.cases) == 3


def test_shape_mismatch(nnunet: Path) -> None:
    write_volume(nnunet / "labelsTr" / "case_002.nii.gz", np.ones((20, 20, 16), np.uint8))
    ds = open_dataset(nnunet)
    assert _problem_for(ds, "case_002") == "image and label shapes differ: (20,20,20) vs (20,20,16)"
    assert len(ds.cases) == 3


def test_affine_mismatch_is_a_problem_but_rounding_is_not(nnunet: Path) -> None:
    for case, shift in (("case_001", 0.5), ("case_002", 1e-5)):
        path = nnunet / "labelsTr" / f"case_{case[-3:]}.nii.gz"
        label = np.asanyarray(nib.load(str(path)).dataobj)
        write_volume(path, label, affine_for(origin=(shift, 0.0, 0.0)))
    ds = open_dataset(nnunet)
    assert "affines differ" in _problem_for(ds, "case_001")
    assert "case_002" in _ids(ds)


def test_all_background_label(nnunet: Path) -> None:
    write_volume(nnunet / "labelsTr" / "case_000.nii.gz", np.zeros(SHAPE, np.uint8))
    ds = open_dataset(nnunet)
    assert "empty" in _problem_for(ds, "case_000")


def test_undeclared_label_value(nnunet: Path) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[5:10, 5:10, 5:10] = 1
    label[12:14, 12:14, 12:14] = 5
    write_volume(nnunet / "labelsTr" / "case_003.nii.gz", label)
    ds = open_dataset(nnunet)
    assert "[5] not declared" in _problem_for(ds, "case_003")


def test_non_integer_label(nnunet: Path) -> None:
    label = np.zeros(SHAPE, np.float32)
    label[5:10, 5:10, 5:10] = 0.5
    write_volume(nnunet / "labelsTr" / "case_003.nii.gz", label)
    assert "non-integer" in _problem_for(open_dataset(nnunet), "case_003")


def test_float_label_with_integer_values_is_fine(nnunet: Path) -> None:
    path = nnunet / "labelsTr" / "case_003.nii.gz"
    write_volume(path, np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32))
    assert "case_003" in _ids(open_dataset(nnunet))


def test_missing_label_file(nnunet: Path) -> None:
    (nnunet / "labelsTr" / "case_003.nii.gz").unlink()
    ds = open_dataset(nnunet)
    assert "missing label file labelsTr/case_003.nii.gz" in _problem_for(ds, "case_003")
    assert len(ds.cases) == 3


def test_missing_channel_file(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=SHAPE, n_channels=2)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    ds = open_dataset(root)
    assert "case_001_0001" in _problem_for(ds, "case_001")
    assert _ids(ds) == ["case_000"]


def test_channels_of_different_shapes(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=SHAPE, n_channels=2)
    write_volume(root / "imagesTr" / "case_000_0001.nii.gz", np.ones((20, 20, 18), np.float32))
    assert "channels have different shapes" in _problem_for(open_dataset(root), "case_000")


def test_2d_image_is_a_problem(nnunet: Path) -> None:
    write_volume(nnunet / "imagesTr" / "case_000_0000.nii.gz", np.ones((20, 20, 1), np.float32))
    assert "2D" in _problem_for(open_dataset(nnunet), "case_000")


def test_msd_4d_image_with_wrong_channel_count(tmp_path: Path) -> None:
    root = write_msd_dataset(tmp_path / "msd", n_cases=2, shape=SHAPE, n_channels=3)
    write_volume(root / "imagesTr" / "case_000.nii.gz", np.ones((*SHAPE, 2), np.float32))
    assert "declares 3 channels" in _problem_for(open_dataset(root), "case_000")


def test_msd_missing_file(msd: Path) -> None:
    (msd / "imagesTr" / "case_002.nii.gz").unlink()
    ds = open_dataset(msd)
    assert "missing file" in _problem_for(ds, "case_002")
    assert len(ds.cases) == 3


def test_msd_paths_escaping_the_root_are_refused(tmp_path: Path, msd: Path) -> None:
    outside = tmp_path / "outside"
    write_volume(outside / "secret.nii.gz", np.ones(SHAPE, np.float32))
    write_volume(outside / "secret_label.nii.gz", np.ones(SHAPE, np.uint8))
    (msd / "imagesTr" / "link.nii.gz").symlink_to(outside / "secret.nii.gz")
    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"] += [
        {"image": "../outside/secret.nii.gz", "label": "./labelsTr/case_000.nii.gz"},
        {"image": str(outside / "abs.nii.gz"), "label": "./labelsTr/case_000.nii.gz"},
        {"image": "./imagesTr/link.nii.gz", "label": "./labelsTr/case_000.nii.gz"},
        {"image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/../../outside/secret_label.nii.gz"},
    ]
    (msd / "dataset.json").write_text(json.dumps(meta))
    ds = open_dataset(msd)
    assert _ids(ds) == ["case_000", "case_001", "case_002", "case_003"]
    messages = {p.case_id: p.message for p in ds.problems}
    assert "outside the dataset folder" in messages["secret"]
    assert "must be relative" in messages["abs"]
    assert "outside the dataset folder" in messages["link"]
    # The fourth reuses case_000's image name: reported as a duplicate before its paths are looked at.
    assert len(ds.problems) == 4


def test_label_path_escape_is_refused(tmp_path: Path, msd: Path) -> None:
    write_volume(tmp_path / "outside" / "label.nii.gz", np.ones(SHAPE, np.uint8))
    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"][1]["label"] = "./labelsTr/../../outside/label.nii.gz"
    (msd / "dataset.json").write_text(json.dumps(meta))
    assert "outside the dataset folder" in _problem_for(open_dataset(msd), "case_001")


def test_all_cases_bad_raises_with_first_problems(nnunet: Path) -> None:
    for path in (nnunet / "labelsTr").iterdir():
        write_volume(path, np.zeros(SHAPE, np.uint8))
    with pytest.raises(DatasetError, match=r"no usable case.*case_000: label is empty"):
        open_dataset(nnunet)


def test_check_false_skips_reading(nnunet: Path) -> None:
    truncate_file(nnunet / "imagesTr" / "case_001_0000.nii.gz", keep=0.6)
    ds = open_dataset(nnunet, check=False)
    assert len(ds.cases) == 4 and ds.problems == []


# --- preprocessing --------------------------------------------------------------------------


def test_resampling_to_a_given_spacing(nnunet: Path, tmp_path: Path) -> None:
    ds = open_dataset(nnunet)
    out = preprocess(ds, PreprocessConfig(spacing=(2.0, 2.0, 1.25)), cache_root=tmp_path / "cache")
    assert out.spacing == (2.0, 2.0, 1.25)
    assert out.labels == ds.labels
    assert len(out.cases) == 4
    for case in out.cases:
        assert case.image.shape == (1, 10, 10, 16) and case.image.dtype == np.float32
        assert case.label.shape == (10, 10, 16) and case.label.dtype == np.uint8
        assert set(np.unique(case.label).tolist()) <= {0, 1, 2} and case.label.max() > 0


def test_default_spacing_is_the_dataset_median(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=3, shape=(16, 16, 12), spacing=(0.8, 0.8, 2.5))
    out = preprocess(open_dataset(root), cache_root=tmp_path / "cache")
    assert out.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert out.cases[0].image.shape == (1, 16, 16, 12)


def test_multichannel_keeps_the_affine_when_stacking(tmp_path: Path) -> None:
    root = write_nnunet_dataset(
        tmp_path / "ds", n_cases=2, shape=(12, 12, 12), n_channels=2, spacing=(2.0, 2.0, 2.0)
    )
    out = preprocess(open_dataset(root), PreprocessConfig(spacing=(1.0, 1.0, 1.0)), tmp_path / "cache")
    assert out.cases[0].image.shape == (2, 24, 24, 24)
    assert out.cases[0].label.shape == (24, 24, 24)


def test_ct_is_windowed_to_unit_range(tmp_path: Path) -> None:
    root = write_msd_dataset(tmp_path / "ct", n_cases=2, shape=SHAPE, modality="CT")
    ds = open_dataset(root)
    out = preprocess(ds, PreprocessConfig(ct_window=(-100.0, 300.0)), tmp_path / "cache")
    for case in out.cases:
        assert case.image.min() == 0.0 and case.image.max() <= 1.0
        # Air (-1000 HU) is clipped to 0; the inner lesion (~200 HU) lies inside the window.
        assert case.image[0][case.label == 0].min() == 0.0
        assert case.image[0][case.label == 2].mean() == pytest.approx((200 - -100) / 400, abs=0.05)
    narrow = preprocess(ds, PreprocessConfig(ct_window=(-100.0, 150.0)), tmp_path / "cache")
    assert narrow.cases[0].image.max() == 1.0  # the lesion is above this window: clipped to 1


def test_mr_is_z_scored_over_foreground(nnunet: Path, tmp_path: Path) -> None:
    out = preprocess(open_dataset(nnunet), cache_root=tmp_path / "cache")
    for case in out.cases:
        channel = case.image[0]
        foreground = channel[channel != 0]
        assert foreground.size < channel.size  # the zero background is left out of the statistics
        assert abs(float(foreground.mean())) < 1e-3
        assert float(foreground.std()) == pytest.approx(1.0, abs=1e-2)


def test_orientation_is_canonicalised(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=1, shape=(16, 18, 14), spacing=(1.0, 1.5, 2.0))
    spacing = np.array([1.0, 1.5, 2.0])
    size = np.array([16, 18, 14])
    # An LPS twin: x and y flipped in voxel order, with an affine that puts every voxel at the same
    # world position as in the RAS original.
    lps = np.diag([-1.0, -1.5, 2.0, 1.0])
    lps[:3, 3] = [(size[0] - 1) * spacing[0], (size[1] - 1) * spacing[1], 0.0]
    for folder, ras_name, lps_name in (
        ("imagesTr", "case_000_0000.nii.gz", "twin_0000.nii.gz"),
        ("labelsTr", "case_000.nii.gz", "twin.nii.gz"),
    ):
        data = np.asanyarray(nib.load(str(root / folder / ras_name)).dataobj)
        write_volume(root / folder / lps_name, np.ascontiguousarray(data[::-1, ::-1, :]), lps)
    ds = open_dataset(root)
    assert _ids(ds) == ["case_000", "twin"]
    assert nib.aff2axcodes(nib.load(str(ds.cases[1].images[0])).affine) == ("L", "P", "S")
    out = preprocess(ds, cache_root=tmp_path / "cache")
    ras, twin = out.cases
    assert out.spacing == pytest.approx((1.0, 1.5, 2.0))
    assert twin.image.shape == ras.image.shape == (1, 16, 18, 14)
    np.testing.assert_allclose(twin.image, ras.image, atol=1e-5)
    np.testing.assert_array_equal(twin.label, ras.label)


def test_non_consecutive_label_values_become_class_indices(tmp_path: Path) -> None:
    root = write_nnunet_dataset(tmp_path / "ds", n_cases=2, shape=SHAPE)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "tumor": 1, "edema": 4}
    (root / "dataset.json").write_text(json.dumps(meta))
    for path in (root / "labelsTr").iterdir():
        label = np.asanyarray(nib.load(str(path)).dataobj).copy()
        label[label == 2] = 4
        write_volume(path, label)
    out = preprocess(open_dataset(root), cache_root=tmp_path / "cache")
    assert out.labels == {"background": 0, "tumor": 1, "edema": 2}
    assert set(np.unique(out.cases[0].label).tolist()) == {0, 1, 2}


def test_second_call_reads_the_cache_without_opening_nifti(
    nnunet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = open_dataset(nnunet)
    first = preprocess(ds, cache_root=tmp_path / "cache")
    assert not first.from_cache
    assert (first.cache_dir / "meta.json").is_file()
    assert first.cache_dir == tmp_path / "cache" / first.fingerprint
    assert len(list(first.cache_dir.glob("*.npz"))) == 4

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not read NIfTI files")

    monkeypatch.setattr(nib, "load", refuse)
    monkeypatch.setattr(preprocess_module, "preprocess_case", refuse)
    second = preprocess(ds, cache_root=tmp_path / "cache")
    assert second.from_cache
    assert second.fingerprint == first.fingerprint
    assert second.spacing == first.spacing and second.labels == first.labels
    for a, b in zip(first.cases, second.cases, strict=True):
        assert a.case_id == b.case_id
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)


def test_changed_file_or_config_gives_a_new_fingerprint(nnunet: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = preprocess(open_dataset(nnunet), cache_root=cache)

    other_config = preprocess(open_dataset(nnunet), PreprocessConfig(spacing=(2.0, 2.0, 2.0)), cache)
    assert other_config.fingerprint != base.fingerprint and not other_config.from_cache

    window_only = preprocess(open_dataset(nnunet), PreprocessConfig(ct_window=(-500.0, 500.0)), cache)
    assert window_only.fingerprint != base.fingerprint

    # Equal settings written differently (ints, lists, lower case) are the same cache.
    again = preprocess(
        open_dataset(nnunet), PreprocessConfig(spacing=[2, 2, 2], orientation="ras"), cache  # type: ignore[arg-type]
    )
    assert again.fingerprint == other_config.fingerprint and again.from_cache

    # Same size, new mtime: treated as changed (content is not hashed, so mtime is the signal).
    label = nnunet / "labelsTr" / "case_001.nii.gz"
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = preprocess(open_dataset(nnunet), cache_root=cache)
    assert touched.fingerprint != base.fingerprint and not touched.from_cache

    # Rewritten content: new fingerprint too.
    write_volume(nnunet / "imagesTr" / "case_002_0000.nii.gz", np.ones(SHAPE, np.float32) * 7)
    rewritten = preprocess(open_dataset(nnunet), cache_root=cache)
    assert rewritten.fingerprint not in {base.fingerprint, touched.fingerprint} and not rewritten.from_cache


def test_interrupted_cache_is_rebuilt(nnunet: Path, tmp_path: Path) -> None:
    ds = open_dataset(nnunet)
    first = preprocess(ds, cache_root=tmp_path / "cache")
    (first.cache_dir / "meta.json").unlink()
    next(first.cache_dir.glob("*.npz")).write_bytes(b"half written")
    rebuilt = preprocess(ds, cache_root=tmp_path / "cache")
    assert not rebuilt.from_cache
    assert (rebuilt.cache_dir / "meta.json").is_file()
    assert preprocess(ds, cache_root=tmp_path / "cache").from_cache


def test_damaged_cache_with_meta_is_rebuilt(nnunet: Path, tmp_path: Path) -> None:
    ds = open_dataset(nnunet)
    first = preprocess(ds, cache_root=tmp_path / "cache")
    next(first.cache_dir.glob("*.npz")).write_bytes(b"bit rot")
    rebuilt = preprocess(ds, cache_root=tmp_path / "cache")
    assert not rebuilt.from_cache and len(rebuilt.cases) == 4


def test_default_cache_root_is_inside_the_dataset(nnunet: Path) -> None:
    ds = open_dataset(nnunet)
    out = preprocess(ds)
    assert out.cache_dir.parent == nnunet.resolve() / ".bnrank_cache"
    # The cache folder is not mistaken for data on the next open.
    assert _ids(open_dataset(nnunet)) == _ids(ds)


def test_default_cache_root_falls_back_when_dataset_is_read_only(
    nnunet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(preprocess_module.tempfile, "NamedTemporaryFile", read_only)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root(open_dataset(nnunet)) == tmp_path / "xdg" / "bnrank"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spacing": (1.0, 0.0, 1.0)},
        {"spacing": (1.0, 1.0)},
        {"ct_window": (100.0, -100.0)},
        {"orientation": "RRS"},
        {"orientation": "RA"},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(DatasetError):
        PreprocessConfig(**kwargs)  # type: ignore[arg-type]


def test_unchecked_dataset_with_bad_file_fails_by_name(nnunet: Path, tmp_path: Path) -> None:
    truncate_file(nnunet / "imagesTr" / "case_001_0000.nii.gz", keep=0.6)
    with pytest.raises(DatasetError, match="case_001"):
        preprocess(open_dataset(nnunet, check=False), cache_root=tmp_path / "cache")
