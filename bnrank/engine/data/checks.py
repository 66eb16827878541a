"""Per-case checks, so a bad file is reported by name instead of crashing training hours later.

Every check reads the voxel data, not only the header: a truncated .nii.gz has a perfect header and
fails only when the data is decompressed, which is exactly what a data loader would hit mid-epoch.

Reading the data is also how a decompression bomb would strike: zeros compress about a thousandfold, so
a 50 MB .nii.gz can hold a 4000³ float32 volume, and nibabel allocates and fills the whole 256 GB array.
The header states the shape and type before anything is decompressed, so the size they imply is checked
against `max_volume_bytes` first, and such a case is left out as a Problem, unread.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bnrank.engine.data.layouts import Case, Problem

# Largest decompressed volume read by default. A 512³ float32 CT is 0.5 GiB; 2 GiB admits 4D multi-channel
# MSD files of that size while refusing headers that claim tens of gigabytes.
DEFAULT_MAX_VOLUME_BYTES = 2 * 1024**3

# Relative to the smallest voxel edge: float32 storage of qform/sform loses ~1e-7 of the origin's
# magnitude, so this tolerates rounding but not a real shift of a thousandth of a voxel or more.
AFFINE_TOLERANCE = 1e-3


class _CaseProblem(Exception):
    """Internal: stops checking a case at its first problem; later checks would only repeat it."""


def volume_bytes(image: nib.spatialimages.SpatialImage) -> int:
    """Bytes the array of `image` will take once read, from its header alone (nothing is decompressed).

    Scaled data (scl_slope/scl_inter) is returned as floats, so it is counted at 8 bytes per voxel.
    """
    shape = tuple(int(s) for s in image.shape)
    dataobj = image.dataobj
    itemsize = np.dtype(getattr(dataobj, "dtype", image.get_data_dtype())).itemsize
    slope, inter = getattr(dataobj, "slope", 1.0), getattr(dataobj, "inter", 0.0)
    scaled = not (slope in (1, None) and inter in (0, None))
    return int(np.prod(shape, dtype=object)) * max(itemsize, 8 if scaled else 1)


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _load(path: Path, root: Path, max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Return (data, affine); any failure of nibabel, gzip or zlib becomes one readable message."""
    shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    if not path.is_file():
        raise _CaseProblem(f"missing file {shown}")
    try:
        image = nib.load(str(path))
        claimed = volume_bytes(image)
    except Exception as exc:
        raise _CaseProblem(f"unreadable file {shown}: {type(exc).__name__}: {exc}") from exc
    if claimed > max_volume_bytes:
        raise _CaseProblem(
            f"{shown} is refused: its header claims shape {_fmt(image.shape)} of {image.get_data_dtype()}, "
            f"{_size(claimed)} once decompressed, above the {_size(max_volume_bytes)} limit per volume"
        )
    try:
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    # Deliberately broad: nibabel surfaces ImageFileError, ValueError and struct errors, gzip
    # raises BadGzipFile/EOFError/OSError, zlib raises zlib.error, numpy MemoryError or reshape
    # errors. Whatever the cause, the case is unusable and the user needs its name.
    except Exception as exc:
        raise _CaseProblem(f"unreadable file {shown}: {type(exc).__name__}: {exc}") from exc
    return data, affine


def _spatial(data: np.ndarray, what: str, channels_last: bool) -> np.ndarray:
    """Drop a singleton trailing axis; keep a real one only where one file holds all channels (MSD)."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim < 3 or 1 in data.shape[:3]:
        raise _CaseProblem(f"{what} is 2D (shape {_fmt(data.shape)}); only 3D volumes are supported")
    if data.ndim == 3 or (data.ndim == 4 and channels_last):
        return data
    raise _CaseProblem(f"{what} has shape {_fmt(data.shape)}; expected a 3D volume")


def _same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    voxel = float(np.min(np.linalg.norm(a[:3, :3], axis=0)))
    return bool(np.allclose(a, b, rtol=0.0, atol=AFFINE_TOLERANCE * max(voxel, 1e-6)))


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def _check_label_values(label: np.ndarray, declared: dict[str, int]) -> None:
    if not np.issubdtype(label.dtype, np.integer):
        finite = np.isfinite(label)
        if not finite.all() or not np.all(np.mod(label, 1) == 0):
            raise _CaseProblem("label has non-integer values (expected integer class values)")
    values = np.unique(label).astype(np.int64)
    undeclared = sorted(set(values.tolist()) - set(declared.values()))
    if undeclared:
        raise _CaseProblem(
            f"label has value(s) {undeclared} not declared in dataset.json labels {sorted(declared.values())}"
        )
    if values.size == 1 and values[0] == 0:
        raise _CaseProblem("label is empty (all background)")


def check_case(
    case: Case,
    root: Path,
    labels: dict[str, int],
    n_channels: int,
    *,
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
) -> list[Problem]:
    """Problems of one case (empty list: usable). Stops at the first one; it is the one to fix.

    Data is read one file at a time and dropped before the next, so memory stays at one volume, and no
    volume is read whose header implies more than `max_volume_bytes`.
    """
    try:
        reference: tuple[tuple[int, ...], np.ndarray] | None = None
        one_file = len(case.images) == 1
        for index, path in enumerate(case.images):
            data, affine = _load(path, root, max_volume_bytes)
            what = "image" if one_file else f"image channel {index}"
            data = _spatial(data, what, channels_last=one_file)
            found = data.shape[3] if data.ndim == 4 else 1
            if one_file and found != n_channels:
                raise _CaseProblem(
                    f"image has {found} channel(s) (shape {_fmt(data.shape)}); "
                    f"dataset.json declares {n_channels} channels"
                )
            if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
                raise _CaseProblem(f"{what} contains NaN or infinite values")
            shape = tuple(int(s) for s in data.shape[:3])
            del data
            if reference is None:
                reference = (shape, affine)
            elif shape != reference[0]:
                raise _CaseProblem(
                    f"channels have different shapes: {_fmt(reference[0])} vs {_fmt(shape)} (channel {index})"
                )
            elif not _same_affine(reference[1], affine):
                raise _CaseProblem(f"channels have different affines (channel 0 vs channel {index})")
        if reference is None:
            raise _CaseProblem("case lists no image file")
        label, label_affine = _load(case.label, root, max_volume_bytes)
        label = _spatial(label, "label", None)
        label_shape = tuple(int(s) for s in label.shape)
        if label_shape != reference[0]:
            raise _CaseProblem(
                f"image and label shapes differ: {_fmt(reference[0])} vs {_fmt(label_shape)}"
            )
        if not _same_affine(reference[1], label_affine):
            raise _CaseProblem(
                "image and label affines differ (orientation, spacing or origin): "
                f"max difference {np.abs(reference[1] - label_affine).max():.4g}"
            )
        _check_label_values(label, labels)
    except _CaseProblem as problem:
        return [Problem(case.case_id, str(problem))]
    return []


def check_cases(
    cases: list[Case],
    root: Path,
    labels: dict[str, int],
    n_channels: int,
    *,
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
) -> tuple[list[Case], list[Problem]]:
    """Split cases into usable ones and problems, keeping the dataset's order."""
    good: list[Case] = []
    problems: list[Problem] = []
    for case in cases:
        found = check_case(case, root, labels, n_channels, max_volume_bytes=max_volume_bytes)
        if found:
            problems.extend(found)
        else:
            good.append(case)
    return good, problems
