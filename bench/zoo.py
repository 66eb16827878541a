"""The ranking-quality benchmark's candidate zoo and tasks: one committed recipe, built offline and cached.

Everything is made here from the MNI brain anatomy of ``demo_volumes`` (no download). A *subject* is one
draw of ``make_subject`` from ``SeedSequence(root).spawn(n)[i]``; each data set below has its own ``root``,
so no two data sets share a subject, and :func:`check_disjoint` asserts it on the anatomy itself (a hash of
each subject's tissue map) before any ground truth is computed.

**Images.** T1 MR-like: the demo's own image. CT-like: the same anatomy with CT attenuation per tissue
(CSF 8 HU, grey matter 40 HU, white matter 28 HU, a 2-voxel skull of ~900 HU, a soft-tissue scalp, air
outside), a Gaussian point-spread blur and 8 HU noise; a CT *contrast*, not a CT simulation (no beam
hardening, streaks or skull texture). T2 MR-like: tissue intensities in the T2 order (CSF bright, grey
above white matter), blurred, with the demo's scanner changes (gamma, bias field, contrast, Rician noise).
Shapes (the unrelated source): spheres and boxes of random size and brightness in noise, no anatomy.

**Tasks** (:data:`TASKS`): one tuning task and three evaluation tasks, each with fixed train / validation /
test case lists. Proxies see train and validation; the ground truth trains on train and is scored on test.

**Zoo** (:data:`ZOO_RECIPE`): twelve candidates over three architecture families (``unet3d`` at widths 4
and 8, MedicalNet ResNet-10 at width 8, a small MONAI UNet with BatchNorm), made by supervised training on
related anatomy (T1 tissues of other subjects) and on unrelated data (shapes), by Models Genesis on MR-like
and on CT-like volumes, by damaging a supervised network, and by random initialisation. Beside it,
:data:`NNUNET_RECIPE` (issue 11): three nnU-Net v2 PlainConvUNet candidates (InstanceNorm) made the same ways,
saved as nnU-Net's ``checkpoint_final.pth``; an extension pool, outside the pre-registered twelve.

**Cache.** Each candidate's folder under the cache dir is named by a hash of its recipe entry (and its
parent's hash, and :data:`ZOO_FORMAT`); a folder with a ``manifest.json`` is reused as it is. The manifest
holds what was done, the training or pretext-loss curve and the subjects trained on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from bnrank.engine.architectures import architecture_from_network_def, build_model
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.pretrain import PretrainConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
from bnrank.engine.demo import _damage
from bnrank.engine.demo_volumes import _scanner_intensities, make_subject, nifti_bytes
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.pretrain import load_volumes, pretrain
from bnrank.engine.ranking import Candidate
from bnrank.engine.training.patches import TaskData, Volume
from bnrank.engine.training.trainer import train

ZOO_FORMAT = 1  # bump when a change to the generators or the build below changes what a recipe produces
SPACING_MM = 5.0  # every volume is written at this spacing, the one the benchmark's preprocessing uses
PATCH = 24
BATCH = 2

# Hounsfield units of brain CT (typical textbook values) for the CT-like contrast.
CT_HU = {"air": -1000.0, "CSF": 8.0, "grey matter": 40.0, "white matter": 28.0, "bone": 900.0, "scalp": 20.0}
CT_NOISE_HU = 8.0
# Relative T2-weighted signal per tissue (CSF brightest, grey above white matter), on a 0-255 scale.
T2_LEVELS = {"CSF": 230.0, "grey matter": 140.0, "white matter": 95.0}


# ------------------------------------------------------------------------------------------------ images


def head_layers(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain, a 2-voxel skull around it and a 1-voxel scalp outside the skull (boolean masks)."""
    brain = label > 0
    skull = ndimage.binary_dilation(brain, iterations=2) & ~brain
    scalp = ndimage.binary_dilation(brain, iterations=3) & ~brain & ~skull
    return brain, skull, scalp


def ct_like_image(label: np.ndarray, rng: np.random.Generator, noise_hu: float = CT_NOISE_HU) -> np.ndarray:
    """A CT-like head image (HU) from a demo tissue label map: tissue HU, skull, scalp, PSF blur, noise."""
    _, skull, scalp = head_layers(label)
    hu = np.full(label.shape, CT_HU["air"], dtype=np.float32)
    hu[scalp] = CT_HU["scalp"]
    hu[skull] = CT_HU["bone"] * rng.uniform(0.85, 1.1)
    for value, name in ((1, "CSF"), (2, "grey matter"), (3, "white matter")):
        hu[label == value] = CT_HU[name]
    hu = ndimage.gaussian_filter(hu, sigma=0.6)
    return (hu + rng.normal(0.0, noise_hu, hu.shape)).astype(np.float32)


def t2_like_image(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A T2-weighted-like image: T2 tissue order, partial-volume blur, then the demo's scanner changes."""
    image = np.zeros(label.shape, dtype=np.float64)
    for value, name in ((1, "CSF"), (2, "grey matter"), (3, "white matter")):
        image[label == value] = T2_LEVELS[name] * rng.uniform(0.9, 1.1)
    image = ndimage.gaussian_filter(image, sigma=0.7)
    brain = ndimage.gaussian_filter((label > 0).astype(np.float64), sigma=0.7)
    return _scanner_intensities(rng, image, brain).astype(np.float32)


def shapes_volume(rng: np.random.Generator, size: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """The unrelated source: spheres (class 1) and boxes (class 2) of random size and brightness in noise."""
    grid = np.indices((size,) * 3, dtype=np.float32)
    image = rng.normal(0.0, 0.15, (size,) * 3).astype(np.float32) + rng.uniform(-0.2, 0.2)
    label = np.zeros((size,) * 3, dtype=np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        centre = rng.uniform(6, size - 6, 3)
        radius = rng.uniform(2.5, 6.0)
        inside = np.sum((grid - centre[:, None, None, None]) ** 2, axis=0) <= radius**2
        image[inside] += rng.uniform(0.6, 1.4)
        label[inside] = 1
    for _ in range(int(rng.integers(2, 4))):
        lo = rng.integers(2, size - 10, 3)
        hi = lo + rng.integers(3, 9, 3)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        image[box] -= rng.uniform(0.5, 1.2)
        label[box] = 2
    image = ndimage.gaussian_filter(image, 0.6) + rng.normal(0.0, 0.08, image.shape)
    return (100.0 + 60.0 * image).astype(np.float32), label


def anatomy_hash(label: np.ndarray) -> str:
    """Identifies a subject whatever its contrast or label set: a hash of its tissue map."""
    return hashlib.sha256(np.ascontiguousarray(label, dtype=np.uint8).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ data sets


@dataclass(frozen=True)
class DataSpec:
    """A synthetic data set: what each case shows and is labelled with, and the subjects it draws."""

    name: str
    kind: str  # t1_tissue | t1_gmwm | ct_head | t2_tissue | mr_ventricles | shapes | unlabeled_mr | unlabeled_ct
    root: int  # SeedSequence root of its subjects; different for every data set
    n_train: int
    n_val: int = 0
    n_test: int = 0
    what: str = ""

    @property
    def n_cases(self) -> int:
        return self.n_train + self.n_val + self.n_test


LABELS: dict[str, dict[str, int]] = {
    "t1_tissue": {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3},
    "t1_gmwm": {"background": 0, "grey matter": 1, "white matter": 2},
    "ct_head": {"background": 0, "CSF": 1, "brain": 2, "skull": 3},
    "t2_tissue": {"background": 0, "grey matter": 1, "white matter": 2},
    "mr_ventricles": {"background": 0, "ventricles": 1},
    "shapes": {"background": 0, "sphere": 1, "box": 2},
}
CHANNEL = {"ct_head": "CT", "t2_tissue": "T2", "shapes": "MR", "unlabeled_ct": "CT"}
# Ventricles: CSF at least this far (mm) inside the brain, i.e. not the sulcal CSF next to the surface.
VENTRICLE_DEPTH_MM = 15.0


def make_case(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, str]:
    """One case of a data-set kind: (image, label or None, affine, anatomy hash)."""
    if kind == "shapes":
        image, label = shapes_volume(rng)
        return image, label, np.diag([SPACING_MM] * 3 + [1.0]), anatomy_hash(label)
    image, tissue, affine = make_subject(rng, spacing_mm=SPACING_MM)
    ident = anatomy_hash(tissue)
    if kind in ("t1_tissue", "unlabeled_mr"):
        return image, (tissue if kind == "t1_tissue" else None), affine, ident
    if kind in ("ct_head", "unlabeled_ct"):
        image = ct_like_image(tissue, rng)
        if kind == "unlabeled_ct":
            return image, None, affine, ident
        _, skull, _ = head_layers(tissue)
        label = np.where(tissue == 1, 1, np.where(tissue > 1, 2, 0)).astype(np.uint8)
        label[skull] = 3
        return image, label, affine, ident
    if kind == "t1_gmwm":
        return image, np.where(tissue >= 2, tissue - 1, 0).astype(np.uint8), affine, ident
    if kind == "t2_tissue":
        label = np.where(tissue == 2, 1, np.where(tissue == 3, 2, 0)).astype(np.uint8)
        return t2_like_image(tissue, rng), label, affine, ident
    if kind == "mr_ventricles":
        depth = ndimage.distance_transform_edt(tissue > 0) * SPACING_MM
        label = ((tissue == 1) & (depth >= VENTRICLE_DEPTH_MM)).astype(np.uint8)
        return image, label, affine, ident
    raise ValueError(f"unknown data-set kind {kind!r}")


def write_data(spec: DataSpec, cache: Path) -> Path:
    """Write a data set once (nnU-Net layout, or a flat folder for unlabeled volumes) with its manifest."""
    out = cache / "data" / f"{spec.name}-{spec_key(asdict(spec))}"
    if (out / "manifest.json").is_file():
        return out
    labelled = not spec.kind.startswith("unlabeled")
    images = out / "imagesTr" if labelled else out / "volumes"
    images.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, child in enumerate(np.random.SeedSequence(spec.root).spawn(spec.n_cases)):
        image, label, affine, ident = make_case(spec.kind, np.random.default_rng(child))
        case = f"{spec.name}_{i:03d}"
        if labelled:
            assert label is not None
            (images / f"{case}_0000.nii.gz").write_bytes(nifti_bytes(image, affine))
            (out / "labelsTr").mkdir(exist_ok=True)
            (out / "labelsTr" / f"{case}.nii.gz").write_bytes(nifti_bytes(label.astype(np.uint8), affine))
            present = int((label > 0).sum())
        else:
            (images / f"{case}.nii.gz").write_bytes(nifti_bytes(image, affine))
            present = None
        cases.append({"case": case, "subject": f"{spec.root}:{i}", "anatomy": ident, "foreground_voxels": present})
    ids = [c["case"] for c in cases]
    split = {
        "train": ids[: spec.n_train],
        "val": ids[spec.n_train : spec.n_train + spec.n_val],
        "test": ids[spec.n_train + spec.n_val :],
    }
    if labelled:
        meta = {
            "name": f"Dataset9{spec.root % 100:02d}_{spec.name.replace('_', '')}",
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


def data_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def load_split(folder: Path, cache: Path) -> dict[str, list[Volume]]:
    """A labelled data set preprocessed by the engine (5 mm, its normalisation), as train / val / test."""
    meta = json.loads((folder / "dataset.json").read_text())
    pre = preprocess(open_dataset(folder), PreprocessConfig(spacing=(SPACING_MM,) * 3), cache_root=cache / "pre")
    values = sorted(meta["labels"].values())
    lut = np.zeros(max(values) + 1, dtype=np.uint8)
    lut[values] = np.arange(len(values), dtype=np.uint8)
    by_id = {
        c.case_id: Volume(c.case_id, c.image.astype(np.float32, copy=False), lut[c.label.astype(np.int64)])
        for c in pre.cases
    }
    split = data_manifest(folder)["split"]
    return {part: [by_id[c] for c in ids] for part, ids in split.items()}


def class_names(folder: Path) -> list[str]:
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    return [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]


# Roots: sources 1000-4999, tasks 10000 and up. Never reuse a root.
SOURCES: dict[str, DataSpec] = {
    "source_t1": DataSpec("source_t1", "t1_tissue", 1000, 8, 2, what="T1 tissues of other subjects (related)"),
    "source_shapes": DataSpec("source_shapes", "shapes", 2000, 8, 2, what="spheres and boxes (unrelated)"),
    "unlabeled_mr": DataSpec("unlabeled_mr", "unlabeled_mr", 3000, 10, what="unlabeled T1 MR-like heads"),
    "unlabeled_ct": DataSpec("unlabeled_ct", "unlabeled_ct", 4000, 10, what="unlabeled CT-like heads"),
}

TASKS: dict[str, DataSpec] = {
    "tuning": DataSpec(
        "tuning", "t1_gmwm", 10000, 8, 3, 6, what="tuning task: T1 MR, grey and white matter (proxy settings)"
    ),
    "ct_head": DataSpec("ct_head", "ct_head", 20000, 6, 2, 6, what="CT-like head: CSF, brain, skull"),
    "t2_fewshot": DataSpec(
        "t2_fewshot", "t2_tissue", 30000, 4, 2, 6, what="T2 MR-like, grey and white matter, 4 training cases"
    ),
    "ventricles": DataSpec(
        "ventricles", "mr_ventricles", 40000, 8, 3, 6, what="T1 MR, the ventricles only (a small structure)"
    ),
}
EVALUATION_TASKS = ("ct_head", "t2_fewshot", "ventricles")
TUNING_TASK = "tuning"


# ------------------------------------------------------------------------------------------------ recipe


@dataclass(frozen=True)
class Recipe:
    """One candidate: its network and how it is made.

    ``make``: ``random`` (the seeded initialisation), ``supervised`` (all parameters trained on ``source``
    for ``steps`` at ``lr``), ``genesis`` (Models Genesis on ``source``'s unlabeled volumes for ``steps``),
    ``damaged`` (``parent`` with ``share`` of every conv's output filters replaced by noise of their scale).
    """

    name: str
    architecture: str
    build: dict[str, Any] = field(default_factory=dict)
    network_def: dict[str, Any] | None = None
    make: str = "random"
    source: str | None = None
    steps: int = 0
    lr: float = 3e-3
    parent: str | None = None
    share: float = 0.0
    seed: int = 0
    what: str = ""


MONAI_SMALL_UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "channels": [8, 16, 32, 64],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": "batch",
}
U8 = {"width": 8}
U4 = {"width": 4}
RN = {"width": 8}
SUPERVISED_STEPS = 300
GENESIS_STEPS = 800

ZOO_RECIPE: tuple[Recipe, ...] = (
    Recipe("u8_random", "unet3d", U8, seed=11, what="unet3d w8, random initialisation"),
    Recipe(
        "u8_brain_t1",
        "unet3d",
        U8,
        make="supervised",
        source="source_t1",
        steps=SUPERVISED_STEPS,
        seed=12,
        what="unet3d w8, supervised on T1 tissues of other subjects (related)",
    ),
    Recipe("u4_random", "unet3d", U4, seed=21, what="unet3d w4, random initialisation"),
    Recipe(
        "u4_brain_t1",
        "unet3d",
        U4,
        make="supervised",
        source="source_t1",
        steps=SUPERVISED_STEPS,
        seed=22,
        what="unet3d w4, supervised on T1 tissues of other subjects (related)",
    ),
    Recipe(
        "u4_genesis_mr",
        "unet3d",
        U4,
        make="genesis",
        source="unlabeled_mr",
        steps=GENESIS_STEPS,
        lr=1e-3,
        seed=23,
        what="unet3d w4, Models Genesis on MR-like volumes",
    ),
    Recipe(
        "u4_genesis_ct",
        "unet3d",
        U4,
        make="genesis",
        source="unlabeled_ct",
        steps=GENESIS_STEPS,
        lr=1e-3,
        seed=24,
        what="unet3d w4, Models Genesis on CT-like volumes",
    ),
    Recipe("rn10_random", "medicalnet_resnet10", RN, seed=31, what="MedicalNet ResNet-10 w8, random initialisation"),
    Recipe(
        "rn10_brain_t1",
        "medicalnet_resnet10",
        RN,
        make="supervised",
        source="source_t1",
        steps=SUPERVISED_STEPS,
        seed=32,
        what="MedicalNet ResNet-10 w8, supervised on T1 tissues (related)",
    ),
    Recipe(
        "rn10_brain_t1_damaged",
        "medicalnet_resnet10",
        RN,
        make="damaged",
        parent="rn10_brain_t1",
        share=0.5,
        seed=33,
        what="rn10_brain_t1 with 50 % of every conv's filters replaced by noise (damaged)",
    ),
    Recipe(
        "monai_random",
        "monai",
        network_def=MONAI_SMALL_UNET,
        seed=41,
        what="MONAI UNet (8-64 channels, BatchNorm), random initialisation",
    ),
    Recipe(
        "monai_brain_t1",
        "monai",
        network_def=MONAI_SMALL_UNET,
        make="supervised",
        source="source_t1",
        steps=SUPERVISED_STEPS,
        seed=42,
        what="MONAI UNet, supervised on T1 tissues (related)",
    ),
    Recipe(
        "monai_shapes",
        "monai",
        network_def=MONAI_SMALL_UNET,
        make="supervised",
        source="source_shapes",
        steps=SUPERVISED_STEPS,
        seed=43,
        what="MONAI UNet, supervised on spheres and boxes (unrelated)",
    ),
)


# The norm-only extension pool (issue 11): nnU-Net v2 PlainConvUNet candidates, InstanceNorm3d with affine, as
# nnU-Net's planner writes them, at a size the benchmark's CPU trains fast: 4 stages of 8-64 features, strides
# 1-2-2-2 (24 -> 12 -> 6 -> 3 voxels: the benchmark's 24³ patch divides), 2 convs per stage. Kept apart from
# ZOO_RECIPE so the 12 pre-registered candidates, their keys and their results stay as they are; each entry is
# keyed like theirs (recipe_keys), so adding these rebuilds none of them.
NNUNET_PLAIN_ARCH: dict[str, Any] = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 64],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 4,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}

NNUNET_RECIPE: tuple[Recipe, ...] = (
    Recipe("nnunet_random", "nnunet", NNUNET_PLAIN_ARCH, seed=51, what="nnU-Net PlainConvUNet 8-64, random init"),
    Recipe(
        "nnunet_brain_t1",
        "nnunet",
        NNUNET_PLAIN_ARCH,
        make="supervised",
        source="source_t1",
        steps=SUPERVISED_STEPS,
        seed=52,
        what="nnU-Net PlainConvUNet 8-64, supervised on T1 tissues of other subjects (related)",
    ),
    Recipe(
        "nnunet_genesis_ct",
        "nnunet",
        NNUNET_PLAIN_ARCH,
        make="genesis",
        source="unlabeled_ct",
        steps=GENESIS_STEPS,
        lr=1e-3,
        seed=53,
        what="nnU-Net PlainConvUNet 8-64, Models Genesis on CT-like volumes",
    ),
)
ALL_RECIPES: tuple[Recipe, ...] = ZOO_RECIPE + NNUNET_RECIPE


def spec_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def recipe_keys(recipe: Sequence[Recipe]) -> dict[str, str]:
    """Content key of every candidate: its entry, its source's spec, its parent's key and the format."""
    keys: dict[str, str] = {}
    for r in recipe:
        parent = keys[r.parent] if r.parent else None
        source = asdict(SOURCES[r.source]) if r.source else None
        keys[r.name] = spec_key({"recipe": asdict(r), "source": source, "parent": parent, "format": ZOO_FORMAT})
    return keys


def weights_name(r: Recipe) -> str:
    """nnU-Net candidates are saved as nnU-Net v2 saves them (so ranking reads them through the nnU-Net format
    loader, plans and all, as it reads a user's); every other candidate as safetensors."""
    return "checkpoint_final.pth" if r.architecture == "nnunet" else "weights.safetensors"


def candidate_of(r: Recipe, path: Path) -> Candidate:
    if r.architecture == "nnunet":  # the architecture comes from the checkpoint's own plans, as for an upload
        return Candidate(name=r.name, path=path)
    if r.network_def is not None:
        return Candidate(name=r.name, path=path, network_def=r.network_def)
    return Candidate(name=r.name, path=path, architecture=r.architecture)


def _build(r: Recipe, in_channels: int, out_channels: int) -> torch.nn.Module:
    torch.manual_seed(r.seed)
    if r.network_def is not None:
        return architecture_from_network_def(r.network_def).build(in_channels=in_channels, out_channels=out_channels)
    return build_model(r.architecture, in_channels=in_channels, out_channels=out_channels, **r.build)


@dataclass
class Zoo:
    candidates: list[Candidate]
    manifests: dict[str, dict[str, Any]]
    keys: dict[str, str]


def build_zoo(cache: str | Path, recipe: Sequence[Recipe] = ZOO_RECIPE, log: Callable[[str], None] = print) -> Zoo:
    """Build (or reuse from ``cache``) every candidate of the recipe; returns them with their manifests."""
    cache = Path(cache)
    keys = recipe_keys(recipe)
    by_name = {r.name: r for r in recipe}
    manifests: dict[str, dict[str, Any]] = {}
    candidates: list[Candidate] = []
    for r in recipe:
        folder = cache / "zoo" / f"{r.name}-{keys[r.name]}"
        weights = folder / weights_name(r)
        if not (folder / "manifest.json").is_file():
            t0 = time.perf_counter()
            manifest = _make(r, by_name, keys, cache, weights, log)
            manifest.update(recipe=asdict(r), key=keys[r.name], seconds=round(time.perf_counter() - t0, 1))
            # the recipe key names what was asked for; the hash names what this CPU made of it (training on
            # another CPU model gives other bits), so results from several machines can be told apart
            manifest["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            log(f"zoo: built {r.name} in {manifest['seconds']:.0f}s")
        manifests[r.name] = json.loads((folder / "manifest.json").read_text())
        candidates.append(candidate_of(r, weights))
    return Zoo(candidates=candidates, manifests=manifests, keys=keys)


def _make(
    r: Recipe, by_name: dict[str, Recipe], keys: dict[str, str], cache: Path, weights: Path, log: Callable
) -> dict[str, Any]:
    meta = {"description": r.what, "recipe": r.name}
    if r.make == "random":
        _save(r, _build(r, 1, 2), weights, meta)
        return {"what": r.what, "subjects": []}
    if r.make == "damaged":
        assert r.parent is not None
        parent = cache / "zoo" / f"{r.parent}-{keys[r.parent]}"
        model, _ = load_checkpoint(
            parent / "weights.safetensors",
            architecture=None if by_name[r.parent].network_def else by_name[r.parent].architecture,
            network_def=by_name[r.parent].network_def,
        )
        _damage(model, share=r.share, seed=r.seed)
        save_weights(model, weights, meta)
        parent_manifest = json.loads((parent / "manifest.json").read_text())
        return {"what": r.what, "parent": r.parent, "subjects": parent_manifest["subjects"]}
    assert r.source is not None
    spec = SOURCES[r.source]
    folder = write_data(spec, cache)
    subjects = [c["anatomy"] for c in data_manifest(folder)["cases"]]
    if r.make == "genesis":
        modality = "CT" if spec.kind == "unlabeled_ct" else "MR"
        volumes = load_volumes(folder / "volumes", modality)
        config = PretrainConfig(
            architecture=r.architecture,
            build_kwargs=dict(r.build),
            steps=r.steps,
            patch_size=(PATCH,) * 3,
            batch_size=4,
            lr=r.lr,
            seed=r.seed,
            modality=modality,
            log_every=20,
        )
        model, result = pretrain(volumes, config)
        _save(r, model, weights, meta, steps=r.steps)
        curve = result.curve
        log(f"zoo: {r.name}: restoration MSE {curve[0]['loss']:.4f} -> {result.final_loss:.4f} in {r.steps} steps")
        return {"what": r.what, "subjects": subjects, "pretext_curve": curve, "flattening": flattening(curve)}
    if r.make == "supervised":
        split = load_split(folder, cache)
        names = class_names(folder)
        data = TaskData(split["train"], split["val"], names)
        model = _build(r, 1, len(names))
        config = TrainConfig(
            max_steps=r.steps,
            patch_size=(PATCH,) * 3,
            batch_size=BATCH,
            val_every=max(1, r.steps // 6),
            patience=10**6,
            lr=r.lr,
            seed=r.seed,
        )
        result = train(model, model.parameters(), data, config, label=r.name)
        _save(r, model, weights, meta, labels=LABELS[spec.kind], steps=r.steps)
        log(f"zoo: {r.name}: source validation Dice {result.score:.3f} after {r.steps} steps")
        return {"what": r.what, "subjects": subjects, "source_curve": result.curve, "source_dice": result.score}
    raise ValueError(f"unknown recipe kind {r.make!r}")


def _save(
    r: Recipe,
    model: torch.nn.Module,
    path: Path,
    meta: dict[str, Any],
    labels: dict[str, int] | None = None,
    steps: int = 0,
) -> None:
    if r.architecture == "nnunet":
        save_nnunet_checkpoint(model, r.build, path, labels=labels, steps=steps)
    else:
        save_weights(model, path, meta)


def nnunet_plans(arch: dict[str, Any]) -> dict[str, Any]:
    """plans.json as nnU-Net v2's planner writes it, one 3d_fullres configuration at the benchmark's data
    (5 mm, 24³ patches, z-score normalisation as for MR), holding ``arch`` as its architecture entry."""
    return {
        "dataset_name": "Dataset950_BNRankZoo",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [SPACING_MM] * 3,
        "image_reader_writer": "NibabelIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": BATCH,
                "patch_size": [PATCH] * 3,
                "spacing": [SPACING_MM] * 3,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name": arch["network_class_name"],
                    "arch_kwargs": arch["arch_kwargs"],
                    "_kw_requires_import": arch["kw_requires_import"],
                },
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
    }


def save_nnunet_checkpoint(
    model: torch.nn.Module, arch: dict[str, Any], path: Path, labels: dict[str, int] | None = None, steps: int = 0
) -> Path:
    """Write ``model`` as nnU-Net v2's trainer writes checkpoint_final.pth: network_weights beside init_args
    (plans, configuration, fold, dataset_json), the trainer's name and epoch; atomically. ``labels`` are the
    source task's (a random or Models Genesis network has none: background and one foreground, the head's
    count nnU-Net would have at the least)."""
    labels = labels or {"background": 0, "foreground": 1}
    checkpoint = {
        "network_weights": {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "current_epoch": steps,
        "init_args": {
            "plans": nnunet_plans(arch),
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": {
                "channel_names": {"0": "MR"},
                "labels": labels,
                "numTraining": 0,
                "file_ending": ".nii.gz",
            },
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        torch.save(checkpoint, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def flattening(curve: Sequence[dict[str, float]]) -> dict[str, float]:
    """How flat the end of a loss curve is: the relative drop over its last fifth, and over the one before."""
    losses = [p["loss"] for p in curve]
    n = max(1, len(losses) // 5)
    last, before, earlier = np.mean(losses[-n:]), np.mean(losses[-2 * n : -n]), np.mean(losses[-3 * n : -2 * n])
    return {
        "drop_last_fifth": float((before - last) / before),
        "drop_fifth_before": float((earlier - before) / earlier),
        "first": float(losses[0]),
        "last": float(last),
    }


def check_disjoint(zoo: Zoo, task_folders: Iterable[tuple[str, Path]]) -> None:
    """Assert that no subject a candidate was trained on is in any task's test split (nor anywhere in a task)."""
    trained = {s for m in zoo.manifests.values() for s in m["subjects"]}
    for name, folder in task_folders:
        manifest = data_manifest(folder)
        test = set(manifest["split"]["test"])
        in_test = {c["anatomy"] for c in manifest["cases"] if c["case"] in test}
        anywhere = {c["anatomy"] for c in manifest["cases"]}
        assert not (trained & in_test), f"task {name}: a test subject was used to make a candidate"
        assert not (trained & anywhere), f"task {name}: a task subject was used to make a candidate"
