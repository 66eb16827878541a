"""Tiny synthetic NIfTI datasets in nnU-Net v2 and MSD layouts, shared by the engine tests.

The volumes are meant to be learnable, not just well-formed: labels are nested spheres and each
label has its own mean intensity (plus noise), so a network trained for a few steps on them should
beat chance. Everything is seeded, so two calls with the same arguments write identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

_MR_CHANNELS_NNUNET = ["T1", "T2", "FLAIR", "ADC"]
_MR_CHANNELS_MSD = ["FLAIR", "T1w", "t1gd", "T2w"]
_STRUCTURES = ["tumor", "edema", "necrosis", "enhancing", "cyst", "vessel"]


def affine_for(
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), origin: tuple[float, ...] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """RAS-aligned affine with the given voxel size and world origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return affine


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save one NIfTI file, creating folders; a thin wrapper so tests read as intent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine if affine is not None else affine_for()), str(path))
    return path


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file short the way an interrupted copy does; the header usually survives."""
    raw = path.read_bytes()
    path.write_bytes(raw[: max(1, int(len(raw) * keep))])
    return path


def label_names(n_labels: int) -> list[str]:
    """Names for the foreground structures, in value order 1..n_labels."""
    return [_STRUCTURES[i] if i < len(_STRUCTURES) else f"structure{i + 1}" for i in range(n_labels)]


def synthetic_case(
    shape: tuple[int, int, int],
    n_labels: int,
    modality: str,
    n_channels: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image [X, Y, Z, C] float32, label [X, Y, Z] uint8).

    The label is `n_labels` nested spheres (value k inside sphere k) inside an ellipsoidal body.
    MR-like images are exactly 0 outside the body, so "nonzero" foreground normalisation has a
    real background to ignore; CT-like images are in Hounsfield units with air outside.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), axis=-1)
    size = np.asarray(shape, dtype=np.float32)
    body = (((grid - (size - 1) / 2) / (0.45 * size)) ** 2).sum(-1) <= 1.0
    center = np.rint((size - 1) / 2 + rng.uniform(-1, 1, 3) * size / 10)
    distance = np.sqrt(((grid - center) ** 2).sum(-1))
    outer = max(2.0, 0.25 * float(size.min()) * rng.uniform(0.85, 1.15))
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(1, n_labels + 1):
        radius = max(1.0, outer * (1.0 - 0.6 * (k - 1) / max(1, n_labels)))
        label[distance <= radius] = k

    channels = []
    for c in range(n_channels):
        gain = 1.0 + 0.3 * c
        if modality == "CT":
            image = np.full(shape, -1000.0, dtype=np.float32)
            image[body] = 40.0
            for k in range(1, n_labels + 1):
                image[label == k] = 40.0 + gain * 80.0 * k
            image += rng.normal(0.0, 20.0, shape).astype(np.float32)
        else:
            image = np.zeros(shape, dtype=np.float32)
            image[body] = 100.0 * gain
            for k in range(1, n_labels + 1):
                image[label == k] = gain * (100.0 + 80.0 * k)
            image[body] += rng.normal(0.0, 15.0, int(body.sum())).astype(np.float32)
        channels.append(image.astype(np.float32))
    return np.stack(channels, axis=-1), label


def _channel_names(modality: str, n_channels: int, msd: bool) -> list[str]:
    if modality == "CT":
        return ["CT"] if n_channels == 1 else [f"CT_phase{c}" for c in range(n_channels)]
    if modality == "MR":
        if n_channels == 1:
            return ["MRI"] if msd else ["T1"]
        names = _MR_CHANNELS_MSD if msd else _MR_CHANNELS_NNUNET
        return [names[c] if c < len(names) else f"MR{c}" for c in range(n_channels)]
    return [f"{modality}{c}" for c in range(n_channels)]


def write_nnunet_dataset(
    root: Path | str,
    n_cases: int = 4,
    shape: tuple[int, int, int] = (24, 24, 24),
    n_labels: int = 2,
    modality: str = "MR",
    seed: int = 0,
    *,
    n_channels: int = 1,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    name: str = "Dataset001_Synthetic",
) -> Path:
    """Write an nnU-Net v2 raw dataset; `n_labels` counts foreground structures (background extra).

    Cases are named case_000, case_001, ...; channel c is imagesTr/<case>_000c.nii.gz.
    `modality` is "MR", "CT" or any other word (used verbatim as channel name prefix).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    affine = affine_for(spacing)
    channels = _channel_names(modality, n_channels, msd=False)
    for i in range(n_cases):
        image, label = synthetic_case(shape, n_labels, modality, n_channels, rng)
        for c in range(n_channels):
            write_volume(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", image[..., c], affine)
        write_volume(root / "labelsTr" / f"case_{i:03d}.nii.gz", label, affine)
    meta = {
        "name": name,
        "channel_names": {str(c): n for c, n in enumerate(channels)},
        "labels": {"background": 0, **{n: k + 1 for k, n in enumerate(label_names(n_labels))}},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root


def write_msd_dataset(
    root: Path | str,
    n_cases: int = 4,
    shape: tuple[int, int, int] = (24, 24, 24),
    n_labels: int = 2,
    modality: str = "MR",
    seed: int = 0,
    *,
    n_channels: int = 1,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    name: str = "Task01_Synthetic",
) -> Path:
    """Write a Medical Segmentation Decathlon dataset; several channels go into one 4D file.

    Cases are named case_000, ...; `labels` uses the MSD value-to-name mapping.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    affine = affine_for(spacing)
    channels = _channel_names(modality, n_channels, msd=True)
    training = []
    for i in range(n_cases):
        image, label = synthetic_case(shape, n_labels, modality, n_channels, rng)
        case = f"case_{i:03d}.nii.gz"
        write_volume(root / "imagesTr" / case, image if n_channels > 1 else image[..., 0], affine)
        write_volume(root / "labelsTr" / case, label, affine)
        training.append({"image": f"./imagesTr/{case}", "label": f"./labelsTr/{case}"})
    meta = {
        "name": name,
        "tensorImageSize": "4D" if n_channels > 1 else "3D",
        "modality": {str(c): n for c, n in enumerate(channels)},
        "labels": {"0": "background", **{str(k + 1): n for k, n in enumerate(label_names(n_labels))}},
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root
