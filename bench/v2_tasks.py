"""Benchmark v2's tasks: few-shot, small structures, and one real head at 2 mm; written once, cached.

Synthetic tasks draw subjects from the demo's ``make_subject`` (the MNI template through a random affine
and elastic warp) as v1 does, each task from its own ``SeedSequence`` root. The real-image tasks are made
from the one real T1 head a Debian package ships: ITK's ``KmeansTest_T1UCharRaw.nii.gz`` (128 × 128 × 62
voxels of 2 × 2 × 3 mm) with its skull-strip mask ``KmeansTest_T1RawSkullStrip.nii.gz``, in
``insighttoolkit5-examples`` (``apt-get install insighttoolkit5-examples``). Its tissue classes come from a
fixed rule, not from an expert: inside the shipped brain mask, a 3-class 1-D k-means of the T1 intensity
(CSF-like, grey-like, white-like, started at the 10/50/90 % quantiles). Each case is that head through a
random affine and elastic warp and the demo's scanner changes (gamma, bias field, contrast, Rician noise),
resampled to 2 mm isotropic: **one real subject under many warps**, not many subjects; stated as such.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
ITK_T1 = "KmeansTest_T1UCharRaw.nii.gz"
ITK_MASK = "KmeansTest_T1RawSkullStrip.nii.gz"
DEEP_MM = 15.0  # "ventricles" / deep CSF: CSF at least this far inside the brain (v1's rule)

LABELS: dict[str, dict[str, int]] = {
    "t1_wm_ventricles": {"background": 0, "white matter": 1, "ventricles": 2},
    "ct_head": {"background": 0, "CSF": 1, "brain": 2, "skull": 3},
    "t2_ventricles": {"background": 0, "ventricles": 1},
    "real_t1_brain": {"background": 0, "brain": 1},
    "real_t1_deep_csf": {"background": 0, "deep CSF": 1},
}
CHANNEL = {"ct_head": "CT", "t2_ventricles": "T2"}


@dataclass(frozen=True)
class TaskSpec:
    """One v2 task: what its cases show and are labelled with, its split, its spacing and patch."""

    name: str
    kind: str
    root: int  # SeedSequence root of its cases; never reused (v1 used 1000-40000)
    n_train: int
    n_val: int
    n_test: int
    spacing_mm: float
    patch: int
    evaluation: bool
    what: str

    @property
    def n_cases(self) -> int:
        return self.n_train + self.n_val + self.n_test


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "tuning",
            "t1_wm_ventricles",
            110000,
            3,
            2,
            6,
            5.0,
            24,
            False,
            "T1 MR-like, 3 training cases: white matter and the ventricles (a large and a small structure)",
        ),
        TaskSpec(
            "ct_fewshot",
            "ct_head",
            120000,
            2,
            2,
            6,
            5.0,
            24,
            True,
            "CT-like head, 2 training cases: CSF, brain, skull",
        ),
        TaskSpec(
            "t2_ventricles",
            "t2_ventricles",
            130000,
            3,
            2,
            6,
            5.0,
            24,
            True,
            "T2 MR-like, 3 training cases: the ventricles only (small structure, ~0.5 % of the volume)",
        ),
        TaskSpec(
            "real_brain",
            "real_t1_brain",
            140000,
            3,
            2,
            6,
            2.0,
            32,
            True,
            "REAL T1 head (ITK example) at 2 mm, 3 training cases: brain extraction",
        ),
        TaskSpec(
            "real_deep_csf",
            "real_t1_deep_csf",
            150000,
            3,
            2,
            6,
            2.0,
            32,
            True,
            "REAL T1 head (ITK example) at 2 mm, 3 training cases: deep CSF (small structure, ~0.6 %)",
        ),
    )
}
TUNING_TASK = "tuning"
EVALUATION_TASKS = tuple(t for t, s in TASKS.items() if s.evaluation)


# ------------------------------------------------------------------------------------------------ cases


def _deep(label_csf: np.ndarray, brain: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    return label_csf & (ndimage.distance_transform_edt(brain, sampling=spacing) >= DEEP_MM)


def synthetic_case(kind: str, rng: np.random.Generator, spacing_mm: float):
    """(image, label, affine, anatomy hash) of a synthetic kind, from the demo's warped MNI anatomy."""
    import zoo as Z

    from bnrank.engine.demo_volumes import make_subject

    if kind == "ct_head":
        return Z.make_case("ct_head", rng)
    image, tissue, affine = make_subject(rng, spacing_mm=spacing_mm)
    ventricles = _deep(tissue == 1, tissue > 0, (spacing_mm,) * 3)
    if kind == "t1_wm_ventricles":
        label = np.where(ventricles, 2, np.where(tissue == 3, 1, 0)).astype(np.uint8)
    elif kind == "t2_ventricles":
        image, label = Z.t2_like_image(tissue, rng), ventricles.astype(np.uint8)
    else:
        raise ValueError(f"unknown synthetic kind {kind!r}")
    return image, label, affine, Z.anatomy_hash(tissue)


@lru_cache(maxsize=1)
def real_head(folder: Path = ITK_DATA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 image, tissue map 0-3 by the k-means rule, affine) of the ITK example head, on its own grid."""
    import nibabel as nib

    if not (folder / ITK_T1).is_file():
        raise SystemExit(
            f"benchmark v2's real-image tasks need {folder / ITK_T1}: apt-get install insighttoolkit5-examples"
        )
    t1 = nib.load(folder / ITK_T1)
    image = np.asarray(t1.dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(folder / ITK_MASK).dataobj) > 0
    values = image[brain]
    centres = np.quantile(values, [0.1, 0.5, 0.9])
    for _ in range(100):
        assign = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        new = np.array([values[assign == k].mean() for k in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    tissue = np.zeros(image.shape, np.uint8)
    tissue[brain] = assign + 1  # 1 CSF-like, 2 grey-like, 3 white-like (T1: dark to bright)
    return image, tissue, t1.affine


def real_case(kind: str, rng: np.random.Generator, spacing_mm: float):
    """The real head through a random affine (±10°, ×0.9-1.1, ±4 mm) and elastic warp (3 mm s.d. on a ~40 mm
    control grid), resampled to ``spacing_mm`` isotropic around the head, with the demo's scanner changes."""
    import zoo as Z

    from bnrank.engine.demo_volumes import _rotation, _scanner_intensities, _smooth_field

    image, tissue, affine = real_head()
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    head = np.argwhere(image > 0.08 * image.max())
    lo, hi = head.min(axis=0) * zooms, head.max(axis=0) * zooms  # mm in the source's index space
    centre = (lo + hi) / 2
    forward = _rotation(np.deg2rad(rng.uniform(-10, 10, 3))) @ np.diag(rng.uniform(0.9, 1.1, 3))
    shift = rng.uniform(-4, 4, 3)
    pad = 12.0
    extent = (hi - lo) * 1.1 + 2 * pad
    shape = tuple(int(n) for n in np.ceil(extent / spacing_mm))
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) * spacing_mm
    out_mm = grid - (extent / 2)[:, None]
    n_ctrl = max(round(float(np.max(extent)) / 40.0), 3)
    warp = np.stack([_smooth_field(rng, shape, n_ctrl, 3.0).reshape(-1) for _ in range(3)])
    src_mm = np.linalg.inv(forward) @ (out_mm - shift[:, None]) + centre[:, None] + warp
    coords = src_mm / zooms[:, None]
    moved = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0).reshape(shape)
    labels = ndimage.map_coordinates(tissue, coords, order=0, mode="constant", cval=0).reshape(shape)
    brain = labels > 0
    moved = _scanner_intensities(rng, moved, brain).astype(np.float32)
    if kind == "real_t1_brain":
        label = brain.astype(np.uint8)
    elif kind == "real_t1_deep_csf":
        label = _deep(labels == 1, brain, (spacing_mm,) * 3).astype(np.uint8)
    else:
        raise ValueError(f"unknown real-image kind {kind!r}")
    out_affine = np.diag([spacing_mm] * 3 + [1.0])
    return moved, label, out_affine, Z.anatomy_hash(labels)


def make_case(spec: TaskSpec, rng: np.random.Generator):
    if spec.kind.startswith("real_"):
        return real_case(spec.kind, rng, spec.spacing_mm)
    return synthetic_case(spec.kind, rng, spec.spacing_mm)


# ------------------------------------------------------------------------------------------------ files


def spec_key(spec: TaskSpec) -> str:
    import zoo as Z

    return Z.spec_key({"v2": asdict(spec)})


def write_task(spec: TaskSpec, cache: Path) -> Path:
    """Write a task once, in nnU-Net's raw layout, with a manifest of its split and each case's anatomy hash."""
    from bnrank.engine.demo_volumes import nifti_bytes

    out = cache / "data-v2" / f"{spec.name}-{spec_key(spec)}"
    if (out / "manifest.json").is_file():
        return out
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(exist_ok=True)
    cases = []
    for i, child in enumerate(np.random.SeedSequence(spec.root).spawn(spec.n_cases)):
        image, label, affine, ident = make_case(spec, np.random.default_rng(child))
        case = f"{spec.name}_{i:03d}"
        (out / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(nifti_bytes(image, affine))
        (out / "labelsTr" / f"{case}.nii.gz").write_bytes(nifti_bytes(label.astype(np.uint8), affine))
        counts = np.bincount(label.reshape(-1), minlength=len(LABELS[spec.kind]))
        cases.append(
            {
                "case": case,
                "subject": f"{spec.root}:{i}",
                "anatomy": ident,
                "shape": list(label.shape),
                "foreground_share": {k: float(counts[v] / label.size) for k, v in LABELS[spec.kind].items() if v},
            }
        )
    ids = [c["case"] for c in cases]
    split = {
        "train": ids[: spec.n_train],
        "val": ids[spec.n_train : spec.n_train + spec.n_val],
        "test": ids[spec.n_train + spec.n_val :],
    }
    meta = {
        "name": f"Dataset8{spec.root // 10000:02d}_{spec.name.replace('_', '')}",
        "description": spec.what,
        "channel_names": {"0": CHANNEL.get(spec.kind, "T1")},
        "labels": LABELS[spec.kind],
        "numTraining": spec.n_cases,
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    manifest = {"spec": asdict(spec), "split": split, "cases": cases}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load_task(spec: TaskSpec, folder: Path, cache: Path, pre_root: Path | None = None) -> dict[str, Any]:
    """The task preprocessed by the engine at its spacing: {train, val, test: [Volume]} (preprocessed volumes
    cached under ``pre_root``, by default the cache's ``pre-v2``)."""
    from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
    from bnrank.engine.training.patches import Volume

    meta = json.loads((folder / "dataset.json").read_text())
    pre = preprocess(
        open_dataset(folder), PreprocessConfig(spacing=(spec.spacing_mm,) * 3), cache_root=pre_root or cache / "pre-v2"
    )
    values = sorted(meta["labels"].values())
    lut = np.zeros(max(values) + 1, dtype=np.uint8)
    lut[values] = np.arange(len(values), dtype=np.uint8)
    by_id = {
        c.case_id: Volume(c.case_id, c.image.astype(np.float32, copy=False), lut[c.label.astype(np.int64)])
        for c in pre.cases
    }
    split = json.loads((folder / "manifest.json").read_text())["split"]
    return {part: [by_id[c] for c in ids] for part, ids in split.items()}


def class_names(spec: TaskSpec) -> list[str]:
    return [n for n, _ in sorted(LABELS[spec.kind].items(), key=lambda kv: kv[1])]
