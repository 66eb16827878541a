"""Self-supervised pretraining with the Models Genesis pretext (Zhou et al., MICCAI 2019 / MedIA 2021).

The thesis (§4.1) made its candidates this way: a 3D U-Net learns to restore the original sub-volume from
a corrupted copy. The corruptions, one function each below, follow the public Models Genesis code
(MrGiovanni/ModelsGenesis, ``pytorch/utils.py``) and its default rates:

- ``flip``: the same random axis flips of input and target (augmentation, rate 0.4);
- ``local_pixel_shuffling``: voxels permuted inside many small blocks (texture destroyed, shape kept; 0.5);
- ``nonlinear_intensity``: a random monotone (or, half of the time, inverted) Bézier intensity curve (0.9);
- ``in_painting``: up to five boxes filled with noise (the network must fill them from context);
- ``out_painting``: everything but a few central boxes replaced by noise (the network must extrapolate);
  one of the two painting operations is applied with rate 0.9, out-painting in 80 % of those cases.

The loss is the MSE between the network's output and the uncorrupted patch, so the network's output
channels equal its input channels. Ranking re-initialises that head anyway, as for every candidate.

Two adaptations, both because Models Genesis assumed CT windowed to [0, 1] and BNRank also pretrains on
z-scored MR: the intensity curve and the painting noise work on each patch's own range (the curve maps
[min, max] onto itself; noise is uniform in [min, max]), which is exactly the original on [0, 1] data; and
the output is linear (no sigmoid), since z-scored targets are not confined to [0, 1]. Block counts of
the pixel shuffling scale with the patch volume (the original's 10 000 blocks are for 64×64×32 patches).

Volumes are read as the engine's preprocessing reads images (MONAI ``LoadImage``, channel first, RAS) and
normalised the same way: MR z-score over non-zero voxels, CT window → [0, 1].
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import EnsureChannelFirst, LoadImage, NormalizeIntensity, Orientation, ScaleIntensityRange
from scipy.special import comb
from torch import nn

from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.pretrain import MODALITIES, PretrainConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import DatasetError, TrainingError
from bnrank.engine.training.precision import autocast, resolve_device
from bnrank.engine.training.trainer import ProgressFn

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# The Models Genesis defaults (config.py of the public code).
FLIP_RATE = 0.4
LOCAL_RATE = 0.5
NONLINEAR_RATE = 0.9
PAINT_RATE = 0.9
OUTPAINT_RATE = 0.8
# The original shuffles 10 000 blocks in a 64×64×32 patch; we keep that density.
SHUFFLE_BLOCKS_PER_VOXEL = 10_000 / (64 * 64 * 32)


# ----------------------------------------------------------------------------------------------- volumes


def list_volumes(folder: str | Path) -> list[Path]:
    """The NIfTI files (``*.nii.gz``, ``*.nii``) directly inside ``folder``, sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"--volumes {root}: no such folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise DatasetError(f"{root} holds no .nii.gz or .nii volume")
    return files


def normalise(image: np.ndarray, modality: str, ct_window: tuple[float, float] = (-1000.0, 1000.0)) -> np.ndarray:
    """Per channel, as the engine's preprocessing: CT window → [0, 1]; MR z-score over non-zero voxels."""
    if modality not in MODALITIES:
        raise DatasetError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    tensor = torch.as_tensor(image, dtype=torch.float32)
    if modality == "CT":
        op = ScaleIntensityRange(a_min=ct_window[0], a_max=ct_window[1], b_min=0.0, b_max=1.0, clip=True)
    else:
        op = NormalizeIntensity(nonzero=True)
    out = torch.cat([torch.as_tensor(op(tensor[c : c + 1])) for c in range(tensor.shape[0])])
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def load_volumes(
    folder: str | Path, modality: str = "MR", ct_window: tuple[float, float] = (-1000.0, 1000.0)
) -> list[np.ndarray]:
    """Every volume of the folder as a normalised float32 array [C, X, Y, Z] (RAS orientation).

    All volumes must have the same channel count (the network's input and output channels).
    """
    loader = LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)
    channel_first = EnsureChannelFirst()
    orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    volumes: list[np.ndarray] = []
    for path in list_volumes(folder):
        try:
            image = orient(channel_first(loader(str(path))))
        except Exception as exc:  # any reader failure names the file
            raise DatasetError(f"{path.name}: cannot read as a NIfTI volume ({exc})") from exc
        array = np.asarray(image.as_tensor() if hasattr(image, "as_tensor") else image, dtype=np.float32)
        if array.ndim != 4:
            raise DatasetError(f"{path.name}: expected a 3D volume (or 4D with channels), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise DatasetError(f"{path.name}: contains NaN or Inf voxels")
        volumes.append(normalise(array, modality, ct_window))
    channels = {v.shape[0] for v in volumes}
    if len(channels) != 1:
        raise DatasetError(f"volumes in {folder} have different channel counts: {sorted(channels)}")
    return volumes


# ------------------------------------------------------------------------------------ the four corruptions


def flip(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, rate: float = FLIP_RATE) -> tuple[np.ndarray, ...]:
    """Flip input and target together along random spatial axes (the original's data_augmentation)."""
    for axis in (1, 2, 3):
        if rng.random() < rate:
            x, y = np.flip(x, axis), np.flip(y, axis)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def local_pixel_shuffling(x: np.ndarray, rng: np.random.Generator, rate: float = LOCAL_RATE) -> np.ndarray:
    """Permute the voxels inside many small random blocks (each side 1 .. side/10), read from the input.

    Local texture is destroyed while the global shape survives: restoring it teaches texture. Sides are
    allowed up to at least 2 voxels, or patches under 20 voxels (here, not in the original) would only get
    1-voxel blocks, which shuffle nothing.
    """
    if rng.random() >= rate:
        return x
    _, sx, sy, sz = x.shape
    out = x.copy()
    n_blocks = max(1, round(SHUFFLE_BLOCKS_PER_VOXEL * sx * sy * sz))
    for _ in range(n_blocks):
        bx, by, bz = (int(rng.integers(1, min(s, max(2, s // 10)) + 1)) for s in (sx, sy, sz))
        ox, oy, oz = (int(rng.integers(0, s - b + 1)) for s, b in ((sx, bx), (sy, by), (sz, bz)))
        window = x[:, ox : ox + bx, oy : oy + by, oz : oz + bz].reshape(x.shape[0], -1)
        perm = rng.permutation(window.shape[1])
        out[:, ox : ox + bx, oy : oy + by, oz : oz + bz] = window[:, perm].reshape(x.shape[0], bx, by, bz)
    return out


def bezier_curve(points: Sequence[Sequence[float]], n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Samples of the Bézier curve through control ``points`` (Bernstein form, as the original)."""
    degree = len(points) - 1
    t = np.linspace(0.0, 1.0, n)
    basis = np.stack([comb(degree, i) * t ** (degree - i) * (1 - t) ** i for i in range(degree + 1)])
    xs = np.array([p[0] for p in points]) @ basis
    ys = np.array([p[1] for p in points]) @ basis
    return xs, ys


def nonlinear_intensity(x: np.ndarray, rng: np.random.Generator, rate: float = NONLINEAR_RATE) -> np.ndarray:
    """Map intensities through a random Bézier curve from (0, 0) to (1, 1) on the patch's own range.

    Half of the time only the curve's x samples are sorted, which inverts the curve (bright becomes
    dark): the network must learn tissue appearance rather than absolute intensity.
    """
    if rng.random() >= rate:
        return x
    points = [[0.0, 0.0], [rng.random(), rng.random()], [rng.random(), rng.random()], [1.0, 1.0]]
    xs, ys = bezier_curve(points)
    if rng.random() < 0.5:
        xs = np.sort(xs)  # ys stays in its (descending) order: an inverted curve
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-8:
        return x
    unit = (x - lo) / (hi - lo)
    return (np.interp(unit, xs, ys) * (hi - lo) + lo).astype(np.float32)


def _box(rng: np.random.Generator, shape: Sequence[int], sizes: Sequence[int]) -> tuple[slice, ...]:
    """A box of the given side lengths placed at random, kept 3 voxels off the border where there is room."""
    slices = []
    for side, size in zip(shape, sizes, strict=True):
        size = int(min(max(size, 1), side))
        margin = min(3, (side - size) // 2)
        start = int(rng.integers(margin, side - size - margin + 1))
        slices.append(slice(start, start + size))
    return tuple(slices)


def in_painting(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill up to five boxes (each side 1/6 .. 1/3 of the patch) with uniform noise in the patch's range."""
    out = x.copy()
    lo, hi = float(x.min()), float(x.max())
    spatial = x.shape[1:]
    for _ in range(5):
        if rng.random() >= 0.95:
            break
        sizes = [int(rng.integers(s // 6, s // 3 + 1)) for s in spatial]
        box = _box(rng, spatial, sizes)
        out[(slice(None), *box)] = rng.uniform(lo, hi, size=out[(slice(None), *box)].shape)
    return out


def out_painting(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace the patch with noise except one to five boxes (each side 3/7 .. 4/7 of the patch) kept intact."""
    lo, hi = float(x.min()), float(x.max())
    out = rng.uniform(lo, hi, size=x.shape).astype(np.float32)
    spatial = x.shape[1:]
    for i in range(5):
        if i > 0 and rng.random() >= 0.95:
            break
        sizes = [s - int(rng.integers(3 * s // 7, 4 * s // 7 + 1)) for s in spatial]
        box = _box(rng, spatial, sizes)
        out[(slice(None), *box)] = x[(slice(None), *box)]
    return out


def corrupt(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The Models Genesis pair (input, target) from one clean patch ``y`` [C, X, Y, Z]."""
    x, y = flip(y, y, rng)
    x = local_pixel_shuffling(x, rng)
    x = nonlinear_intensity(x, rng)
    if rng.random() < PAINT_RATE:
        x = out_painting(x, rng) if rng.random() < OUTPAINT_RATE else in_painting(x, rng)
    return x.astype(np.float32), y.astype(np.float32)


# ----------------------------------------------------------------------------------------------- patches


def sample_patch(volume: np.ndarray, patch: Sequence[int], rng: np.random.Generator, tries: int = 10) -> np.ndarray:
    """A random patch, preferring ones with content (std at least half the volume's; background is dull).

    A volume smaller than the patch is padded with its minimum.
    """
    pads = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(patch, volume.shape[1:], strict=True)]
    if any(after for _, after in pads):
        volume = np.pad(volume, pads, constant_values=float(volume.min()))
    threshold = 0.5 * float(volume.std())
    best: np.ndarray | None = None
    for _ in range(tries):
        corner = [int(rng.integers(0, s - p + 1)) for s, p in zip(volume.shape[1:], patch, strict=True)]
        crop = volume[(slice(None), *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))]
        if best is None or crop.std() > best.std():
            best = crop
        if crop.std() >= threshold:
            break
    assert best is not None
    return np.ascontiguousarray(best)


# ----------------------------------------------------------------------------------------------- training


@dataclass
class PretrainResult:
    steps: int
    seconds: float
    final_loss: float
    curve: list[dict[str, float]]
    n_volumes: int
    in_channels: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_batch(
    volumes: Sequence[np.ndarray], patch: Sequence[int], batch_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` corrupted inputs and their clean targets, drawn from random volumes."""
    xs, ys = [], []
    for _ in range(batch_size):
        clean = sample_patch(volumes[int(rng.integers(len(volumes)))], patch, rng)
        x, y = corrupt(clean, rng)
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def pretrain(
    volumes: Sequence[np.ndarray],
    config: PretrainConfig,
    *,
    model: nn.Module | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[nn.Module, PretrainResult]:
    """Train a network (built from the config, or ``model``) to restore corrupted patches with MSE.

    Everything random (initialisation, patches, corruptions) follows ``config.seed``.
    """
    if not volumes:
        raise DatasetError("no volumes to pretrain on")
    device = resolve_device(config.device)
    channels = int(volumes[0].shape[0])
    torch.manual_seed(config.seed)
    if model is None:
        model = build_model(
            config.architecture, **{**config.build_kwargs, "in_channels": channels, "out_channels": channels}
        )
    model.to(device).train()
    rng = np.random.default_rng(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    amp = TrainConfig(device=device, precision=config.precision)
    curve: list[dict[str, float]] = []
    losses: list[float] = []
    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(1, config.steps + 1):
        x, y = make_batch(volumes, config.patch_size, config.batch_size, rng)
        x, y = x.to(device), y.to(device)
        with autocast(amp):
            out = model(x)
        loss = nn.functional.mse_loss(out.float(), y)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(f"pretraining loss became {loss_value} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss_value)
        if step % config.log_every == 0 or step == config.steps:
            mean = float(np.mean(losses[-config.log_every :]))
            curve.append({"step": step, "loss": mean, "seconds": round(time.perf_counter() - started, 3)})
            if on_progress:
                on_progress(step, config.steps, f"pretrain step {step}: restoration MSE {mean:.4f}")
    result = PretrainResult(
        steps=config.steps,
        seconds=round(time.perf_counter() - started, 3),
        final_loss=curve[-1]["loss"] if curve else loss_value,
        curve=curve,
        n_volumes=len(volumes),
        in_channels=channels,
    )
    return model, result


def pretrain_folder(
    folder: str | Path,
    out: str | Path,
    config: PretrainConfig,
    *,
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    on_progress: Callable[[int, int, str], None] | None = None,
) -> tuple[Path, PretrainResult]:
    """Read and normalise the volumes of ``folder``, pretrain, and write the weights to ``out``."""
    volumes = load_volumes(folder, config.modality, ct_window)
    model, result = pretrain(volumes, config, on_progress=on_progress)
    meta = {
        "description": f"Models Genesis self-supervised pretraining on {len(volumes)} {config.modality} volumes",
        "pretext": "models_genesis",
        "architecture": config.architecture,
        "build_kwargs": config.build_kwargs,
        "modality": config.modality,
        "steps": config.steps,
        "seed": config.seed,
        "final_loss": result.final_loss,
    }
    return save_weights(model, out, meta), result
