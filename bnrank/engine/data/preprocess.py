"""Turn a checked dataset into network-ready arrays once, and reuse them until something changes.

Ranking runs many checkpoints over the same volumes; resampling a CT each time would dominate the run.
So the result is cached on disk under a fingerprint of everything that can change the output
(the settings, every file's size and mtime, the label and channel declarations, the code's format
version). The cache is only trusted when its meta.json exists: that file is written last and
atomically, so an interrupted run is rebuilt instead of being served half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    EnsureChannelFirst,
    LoadImage,
    NormalizeIntensity,
    Orientationd,
    ScaleIntensityRange,
    Spacingd,
)

from bnrank.engine.data.checks import DEFAULT_MAX_VOLUME_BYTES, volume_bytes
from bnrank.engine.data.layouts import Case, Dataset, channel_modality
from bnrank.engine.errors import DatasetError

log = logging.getLogger(__name__)

# Bump whenever the arrays written for the same inputs would differ (new normalisation, new dtype,
# new file layout); old caches then simply stop matching instead of being misread.
CACHE_FORMAT_VERSION = 1
META_FILE = "meta.json"

# nibabel's world axes; passed explicitly so "RAS" means the same thing whatever MONAI's default.
_NIBABEL_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that change the arrays; all of them go into the cache fingerprint.

    `spacing=None` means the dataset's median voxel spacing (after reorientation), so a dataset
    acquired at one resolution is not resampled at all.
    """

    spacing: tuple[float, float, float] | None = None
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        # Values often arrive from JSON as lists or ints; normalise so equal settings hash equally.
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise DatasetError(f"spacing must be three positive numbers, got {self.spacing!r}")
            object.__setattr__(self, "spacing", spacing)
        window = tuple(float(v) for v in self.ct_window)
        if len(window) != 2 or not all(np.isfinite(window)) or window[0] >= window[1]:
            raise DatasetError(f"ct_window must be (low, high) with low < high, got {self.ct_window!r}")
        object.__setattr__(self, "ct_window", window)
        codes = str(self.orientation).upper()
        if len(codes) != 3 or not _valid_axcodes(codes):
            raise DatasetError(f"orientation must be three axis codes such as 'RAS' or 'LPS', got {codes!r}")
        object.__setattr__(self, "orientation", codes)

    def fingerprint_part(self) -> dict[str, Any]:
        """JSON-ready view of the settings, for the cache fingerprint and meta.json."""
        return {
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "ct_window": list(self.ct_window),
            "orientation": self.orientation,
        }


def _valid_axcodes(codes: str) -> bool:
    try:
        ornt = nib.orientations.axcodes2ornt(tuple(codes), _NIBABEL_AXIS_LABELS)
    except ValueError:
        return False
    return not np.isnan(ornt).any() and len(set(ornt[:, 0])) == 3


@dataclass
class PreprocessedCase:
    """One case ready for a network: image [C, X, Y, Z] float32, label [X, Y, Z] class indices."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


@dataclass
class PreprocessedDataset:
    """Preprocessed cases plus what is needed to interpret them and to find them again on disk.

    `labels` maps names to the class indices stored in the label arrays; these are 0..n-1 even
    when dataset.json used gaps (0, 1, 2, 4), so they can index a network's output channels.
    """

    fingerprint: str
    cache_dir: Path
    cases: list[PreprocessedCase]
    spacing: tuple[float, float, float]
    labels: dict[str, int]
    from_cache: bool


def _file_stat(dataset: Dataset, case: Case, path: Path) -> list[Any]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise DatasetError(f"case {case.case_id}: cannot read {path}: {exc}") from exc
    return [path.relative_to(dataset.root).as_posix(), stat.st_size, stat.st_mtime_ns]


def compute_fingerprint(dataset: Dataset, config: PreprocessConfig) -> str:
    """Hash of everything the arrays depend on; uses only stat(), never opens a volume.

    The median spacing is not hashed separately: it is a function of the files, which are.
    """
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "config": config.fingerprint_part(),
        "labels": dataset.labels,
        "channels": [[name, channel_modality(name)] for name in dataset.channel_names],
        "cases": [
            {
                "case_id": case.case_id,
                "files": [_file_stat(dataset, case, p) for p in (*case.images, case.label)],
            }
            for case in dataset.cases
        ],
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def default_cache_root(dataset: Dataset) -> Path:
    """Next to the data when possible (it travels and is deleted with it), else the user cache."""
    candidate = dataset.root / ".bnrank_cache"
    try:
        candidate.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=candidate, prefix=".probe-"):
            pass
        return candidate
    except OSError:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "bnrank"


def _reoriented_spacing(affine: np.ndarray, orientation: str) -> np.ndarray:
    """Voxel edge lengths along the axes the volume will have after reorientation."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    source = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(tuple(orientation), _NIBABEL_AXIS_LABELS)
    transform = nib.orientations.ornt_transform(source, target)
    result = np.empty(3)
    for axis in range(3):
        result[int(transform[axis, 0])] = spacing[axis]
    return result


def median_spacing(dataset: Dataset, orientation: str = "RAS") -> tuple[float, float, float]:
    """Median per-axis spacing over the good cases, from headers only."""
    spacings = []
    for case in dataset.cases:
        try:
            affine = nib.load(str(case.images[0])).affine
        except Exception as exc:  # same breadth as the checks: any reader failure names the case
            raise DatasetError(f"case {case.case_id}: cannot read header of {case.images[0]}: {exc}") from exc
        spacings.append(_reoriented_spacing(np.asarray(affine, dtype=np.float64), orientation))
    median = np.median(np.stack(spacings), axis=0)
    return (float(median[0]), float(median[1]), float(median[2]))


def _label_lookup(labels: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
    """Map declared values to consecutive class indices (identity for the usual 0..n-1).

    Undeclared values map to -1 so an unchecked dataset (check=False) fails loudly instead of
    silently turning them into background.
    """
    ordered = sorted(labels.items(), key=lambda item: item[1])
    lookup = np.full(ordered[-1][1] + 1, -1, dtype=np.int64)
    for index, (_, value) in enumerate(ordered):
        lookup[value] = index
    return lookup, {name: index for index, (name, _) in enumerate(ordered)}


def _load_channels(case: Case) -> MetaTensor:
    """All channels as one [C, X, Y, Z] tensor carrying the first file's affine."""
    loader = LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)
    channel_first = EnsureChannelFirst()
    channels = [channel_first(loader(str(path))) for path in case.images]
    if len(channels) == 1:
        return channels[0]
    first = channels[0]
    stacked = torch.cat([c.as_tensor() for c in channels], dim=0)
    return MetaTensor(stacked, meta=dict(first.meta))  # the meta dict carries the affine


def check_case_size(
    case: Case, spacing: tuple[float, float, float], max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES
) -> None:
    """Refuse a case whose files, or whose arrays after resampling to `spacing`, exceed `max_volume_bytes`.

    From headers alone. The files may have changed since the dataset was checked (a worker opens it with
    check=False), and a target spacing far finer than the data's multiplies the voxel count: 1 mm data
    resampled to 0.05 mm is 8000 times larger. Resampling keeps the physical extent, so the new voxel count
    is the old one × old voxel volume / new voxel volume, whatever the orientation.
    """
    out_voxels, label_voxels = 0.0, 0.0
    for path in case.images:
        try:
            image = nib.load(str(path))
            raw = volume_bytes(image)
            zooms = [float(z) for z in image.header.get_zooms()[:3]]
            shape = [int(n) for n in image.shape]
        except Exception as exc:  # the same breadth as the checks: any reader failure names the case
            raise DatasetError(f"case {case.case_id}: cannot read header of {path.name}: {exc}") from exc
        if raw > max_volume_bytes:
            raise DatasetError(
                f"case {case.case_id}: {path.name} would take {raw / 1024**3:.1f} GiB to read, above the "
                f"{max_volume_bytes / 1024**3:.1f} GiB limit per volume"
            )
        channels = shape[3] if len(shape) > 3 else 1
        voxels = float(np.prod(shape[:3], dtype=np.float64))
        resampled = voxels * float(np.prod(zooms)) / float(np.prod(spacing))
        out_voxels += channels * resampled
        label_voxels = label_voxels or resampled  # the label shares the first image's grid
    out_bytes = 4 * (out_voxels + label_voxels)  # float32 image channels plus the label, as loaded
    if out_bytes > max_volume_bytes:
        raise DatasetError(
            f"case {case.case_id}: resampled to spacing {tuple(spacing)} it would take "
            f"{out_bytes / 1024**3:.1f} GiB, above the {max_volume_bytes / 1024**3:.1f} GiB limit per volume; "
            "choose a coarser spacing"
        )


def preprocess_case(
    case: Case,
    *,
    channel_kinds: list[str],
    spacing: tuple[float, float, float],
    config: PreprocessConfig,
    lookup: np.ndarray,
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
) -> PreprocessedCase:
    """Reorient, resample, normalise one case; image and label go through one dict pipeline.

    Resampling both keys together (Spacingd with ensure_same_shape) guarantees identical grids even
    when their affines differ by rounding. Normalisation comes after resampling so the statistics
    describe exactly the voxels the network will see. Sizes are checked from the headers first.
    """
    check_case_size(case, spacing, max_volume_bytes)
    loader = LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)
    data = {"image": _load_channels(case), "label": EnsureChannelFirst()(loader(str(case.label)))}
    data = Orientationd(["image", "label"], axcodes=config.orientation, labels=_NIBABEL_AXIS_LABELS)(data)
    # scale_extent: the grid covers the same field of view (n * old / new voxels, as nnU-Net does),
    # rather than keeping the first and last voxel centres, which loses a voxel when upsampling.
    with warnings.catch_warnings():  # MONAI warns that align_corners is ignored under scale_extent: intended
        warnings.filterwarnings("ignore", message="align_corners=False is not compatible")
        data = Spacingd(
            ["image", "label"], pixdim=spacing, mode=("bilinear", "nearest"), dtype=np.float32, scale_extent=True
        )(data)
    image = data["image"].as_tensor().float()
    if image.shape[0] != len(channel_kinds):
        raise DatasetError(
            f"case {case.case_id}: image has {image.shape[0]} channels, dataset declares {len(channel_kinds)}"
        )
    low, high = config.ct_window
    window = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    zscore = NormalizeIntensity(nonzero=True)
    normalised = [
        (window if kind == "CT" else zscore)(image[c : c + 1]) for c, kind in enumerate(channel_kinds)
    ]
    image_np = np.ascontiguousarray(torch.cat([torch.as_tensor(n) for n in normalised]).numpy(), np.float32)
    raw_label = np.rint(data["label"].as_tensor()[0].numpy()).astype(np.int64)
    if raw_label.min() < 0 or raw_label.max() >= lookup.size or (lookup[raw_label] < 0).any():
        raise DatasetError(f"case {case.case_id}: label has values not declared in dataset.json labels")
    label_dtype = np.uint8 if lookup.max() < 256 else np.int16
    label_np = np.ascontiguousarray(lookup[raw_label].astype(label_dtype))
    return PreprocessedCase(case.case_id, image_np, label_np)


def _case_file(index: int, case_id: str) -> str:
    """Index prefix keeps names unique; case ids come from file names but are not trusted as paths."""
    return f"{index:05d}_{re.sub(r'[^A-Za-z0-9._-]', '_', case_id)}.npz"


def _atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a unique temp file and os.replace, so readers never see a partial file."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as handle:
            write(handle)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _read_cache(cache_dir: Path, fingerprint: str) -> PreprocessedDataset | None:
    """The cached result, or None when anything is missing or unreadable (then it is rebuilt)."""
    try:
        meta = json.loads((cache_dir / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("fingerprint") != fingerprint:
            return None
        cases = []
        for entry in meta["cases"]:
            with np.load(cache_dir / entry["file"], allow_pickle=False) as arrays:
                cases.append(PreprocessedCase(entry["case_id"], arrays["image"], arrays["label"]))
        spacing = tuple(float(s) for s in meta["spacing"])
        labels = {str(k): int(v) for k, v in meta["labels"].items()}
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged cache is never fatal: it is rebuilt from the NIfTI files
        log.warning("cache at %s is unreadable (%s); rebuilding", cache_dir, exc)
        return None
    return PreprocessedDataset(
        fingerprint, cache_dir, cases, (spacing[0], spacing[1], spacing[2]), labels, from_cache=True
    )


def preprocess(
    dataset: Dataset,
    config: PreprocessConfig | None = None,
    cache_root: str | Path | None = None,
    *,
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
) -> PreprocessedDataset:
    """Preprocessed arrays for the dataset's good cases, from the cache when it is still valid.

    A cache hit only stat()s the NIfTI files. A miss processes and writes one case at a time, so
    peak memory is one raw volume plus the arrays kept for the result; a case whose volume, read or
    resampled, would exceed `max_volume_bytes` is refused (DatasetError) before it is read.
    """
    config = config or PreprocessConfig()
    if not dataset.cases:
        raise DatasetError(f"dataset {dataset.name} has no usable case to preprocess")
    root = Path(cache_root) if cache_root is not None else default_cache_root(dataset)
    fingerprint = compute_fingerprint(dataset, config)
    cache_dir = root / fingerprint

    cached = _read_cache(cache_dir, fingerprint)
    if cached is not None:
        log.info("preprocessed %s: using cache %s", dataset.name, cache_dir)
        return cached

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create preprocessing cache folder {cache_dir}: {exc}") from exc
    spacing = config.spacing if config.spacing is not None else median_spacing(dataset, config.orientation)
    lookup, class_labels = _label_lookup(dataset.labels)
    kinds = [channel_modality(name) for name in dataset.channel_names]
    log.info("preprocessing %s (%d cases) into %s", dataset.name, len(dataset.cases), cache_dir)

    cases: list[PreprocessedCase] = []
    entries: list[dict[str, str]] = []
    for index, case in enumerate(dataset.cases):
        try:
            done = preprocess_case(
                case,
                channel_kinds=kinds,
                spacing=spacing,
                config=config,
                lookup=lookup,
                max_volume_bytes=max_volume_bytes,
            )
        except DatasetError:
            raise
        except Exception as exc:  # check=False datasets can still hold unreadable files
            raise DatasetError(f"case {case.case_id} could not be preprocessed: {exc}") from exc
        name = _case_file(index, case.case_id)
        _atomic_write(
            cache_dir / name,
            lambda handle, done=done: np.savez(handle, image=done.image, label=done.label),
        )
        entries.append({"case_id": case.case_id, "file": name})
        cases.append(done)

    meta = {
        "format": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "dataset": dataset.name,
        "layout": dataset.layout,
        "config": config.fingerprint_part(),
        "spacing": list(spacing),
        "labels": class_labels,
        "channel_names": dataset.channel_names,
        "cases": entries,
    }
    # Last, and atomic: its presence is what marks the cache complete.
    encoded = json.dumps(meta, indent=1).encode("utf-8")
    _atomic_write(cache_dir / META_FILE, lambda handle: handle.write(encoded))
    return PreprocessedDataset(fingerprint, cache_dir, cases, spacing, class_labels, from_cache=False)
