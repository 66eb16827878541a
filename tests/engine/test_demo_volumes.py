"""The demo task must be a usable nnU-Net dataset, anatomically plausible, and reproducible to the byte.

Demos and end-to-end tests rank checkpoints on it, so a silent change in what a seed produces, or an
image/label pair that disagrees on grid, would make their results meaningless.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bnrank.engine.demo_volumes import LABELS, _template_path, make_subject, write_demo_task

N_CASES = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One written task shared by the read-only checks; writing it is the slow part (~1-2 s)."""
    return write_demo_task(tmp_path_factory.mktemp("demo"), n_cases=N_CASES, seed=0)


def _cases(dataset: Path) -> list[tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    images = sorted((dataset / "imagesTr").glob("*_0000.nii.gz"))
    return [
        (nib.load(image), nib.load(dataset / "labelsTr" / image.name.replace("_0000.nii.gz", ".nii.gz")))
        for image in images
    ]


def test_template_is_read_from_the_installed_wheel() -> None:
    # No fetcher is involved: the three files sit inside the nilearn package itself.
    for key in ("t1", "gm", "wm"):
        path = _template_path(key)
        assert path.is_file()
        assert "nilearn" in path.parts


def test_writing_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the demo task tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    write_demo_task(tmp_path, n_cases=1, seed=3)


def test_nnunet_layout_and_dataset_json(dataset: Path) -> None:
    assert dataset.name == "Dataset501_MNIBrain"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1"}
    assert meta["labels"] == LABELS
    assert meta["numTraining"] == N_CASES
    assert meta["file_ending"] == ".nii.gz"
    assert "ICBM152" in meta["description"] and "ICBM152" in meta["reference"]

    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    labels = sorted(p.name for p in (dataset / "labelsTr").iterdir())
    assert images == [f"MNIBrain_{i:03d}_0000.nii.gz" for i in range(N_CASES)]
    assert labels == [f"MNIBrain_{i:03d}.nii.gz" for i in range(N_CASES)]


def test_cases_are_aligned_labelled_and_t1_like(dataset: Path) -> None:
    means = []
    for image_nii, label_nii in _cases(dataset):
        image = np.asarray(image_nii.dataobj)
        label = np.asarray(label_nii.dataobj)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape
        assert all(30 <= n <= 64 for n in image.shape), image.shape
        np.testing.assert_array_equal(image_nii.affine, label_nii.affine)
        np.testing.assert_allclose(image_nii.header.get_zooms(), (4.0, 4.0, 4.0))
        assert int(image_nii.header["qform_code"]) > 0 and int(image_nii.header["sform_code"]) > 0
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() < 600

        counts = np.bincount(label.ravel(), minlength=4)
        assert counts.size == 4, "label values outside {0, 1, 2, 3}"
        print(f"voxels per label (bg, CSF, GM, WM): {counts.tolist()} in {image.shape}")
        # Every foreground class is present with a real volume, not a handful of stray voxels.
        assert counts[1] > 200 and counts[2] > 5000 and counts[3] > 3000
        means.append([float(image[label == k].mean()) for k in range(4)])

    background, csf, gm, wm = np.mean(means, axis=0)
    print(f"mean T1 per label: bg {background:.1f} CSF {csf:.1f} GM {gm:.1f} WM {wm:.1f}")
    assert wm > gm > csf > background


def test_subjects_differ(dataset: Path) -> None:
    (img_a, lab_a), (img_b, lab_b) = _cases(dataset)[:2]
    assert img_a.shape != img_b.shape or not np.array_equal(lab_a.dataobj, lab_b.dataobj)
    rng = np.random.default_rng(1)
    first, second = make_subject(rng), make_subject(rng)
    shape = tuple(min(a, b) for a, b in zip(first[1].shape, second[1].shape, strict=True))
    window = tuple(slice(0, n) for n in shape)
    disagreement = np.mean(first[1][window] != second[1][window])
    assert disagreement > 0.05, "the random transforms barely changed the anatomy"


def test_same_seed_gives_same_bytes_and_cases_do_not_depend_on_n_cases(dataset: Path, tmp_path: Path) -> None:
    again = write_demo_task(tmp_path, n_cases=2, seed=0)
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((again / sub).iterdir()):
            assert path.read_bytes() == (dataset / sub / path.name).read_bytes(), path.name

    image_a, label_a, affine_a = make_subject(np.random.default_rng(7))
    image_b, label_b, affine_b = make_subject(np.random.default_rng(7))
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
    np.testing.assert_array_equal(affine_a, affine_b)


def test_refuses_bad_names_and_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Dataset501"):
        write_demo_task(tmp_path, n_cases=1, name="MNIBrain")
    foreign = tmp_path / "Dataset001_Real"
    (foreign / "labelsTr").mkdir(parents=True)
    (foreign / "labelsTr" / "case_000.nii.gz").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_demo_task(tmp_path, n_cases=1, name="Dataset001_Real")
    assert (foreign / "labelsTr" / "case_000.nii.gz").read_bytes() == b"precious"


def test_rerun_replaces_an_earlier_demo_task(tmp_path: Path) -> None:
    first = write_demo_task(tmp_path, n_cases=2, name="Dataset777_Tiny", channel_name="T1w")
    assert json.loads((first / "dataset.json").read_text())["channel_names"] == {"0": "T1w"}
    # A smaller re-run must not leave stale cases behind numTraining.
    again = write_demo_task(tmp_path, n_cases=1, name="Dataset777_Tiny")
    assert again == first
    assert [p.name for p in (first / "labelsTr").iterdir()] == ["Tiny_000.nii.gz"]
    assert [p.name for p in (first / "imagesTr").iterdir()] == ["Tiny_000_0000.nii.gz"]
    assert json.loads((first / "dataset.json").read_text())["numTraining"] == 1
