"""The training loop shared by BN-only evaluation, fine-tuning and alchemy.

Fairness is the point of a ranking: every candidate is trained on the same cases, the same patches in the
same order (a schedule drawn from the seed and the data alone) and validated on the same cases. What
differs between two candidates' runs is their weights, nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch import nn

from bnrank.engine.errors import TrainingError
from bnrank.engine.options import option, three_sides, validate

ProgressFn = Callable[[int, int, str], None]
"""on_progress(step, total_steps, message); raising from it (e.g. on cancel) stops training."""


@dataclass
class TrainConfig:
    """Budget and optimisation settings; one config is shared by every candidate of a ranking.

    The single declaration of these options: the API's budget schema and the CLI's budget flags are generated
    from the fields below (engine/options.py). Bounds are the widest a worker should accept.
    """

    max_steps: int = option(100, help="training steps per candidate", ge=1, le=1_000_000)
    patch_size: tuple[int, int, int] = option((32, 32, 32), help="patch side(s) in voxels: one or three", ge=4, le=1024)
    batch_size: int = option(2, help="patches per step", ge=1, le=256)
    val_every: int = option(10, help="validate every K steps", ge=1)
    patience: int = option(4, help="stop after Q validations without improvement", ge=1)
    lr: float = option(1e-2, help="Adam learning rate", gt=0, le=10)
    weight_decay: float = option(0.0, help="Adam weight decay", ge=0, api=False, cli=False)
    seed: int = option(0, help="seed of the patch schedule and the new head", ge=0, le=2**31 - 1, api=False)
    device: str = option("cpu", help="cpu or cuda", api=False)
    precision: str = option(
        "auto", help="bf16 autocast where the hardware has it (auto), or fp32 / bf16", choices=("auto", "fp32", "bf16")
    )
    score_window: int = option(3, help="validations averaged into the score", ge=1, api=False, cli=False)
    foreground_ratio: float = option(
        0.5, help="share of patches centred on foreground", ge=0, le=1, api=False, cli=False
    )
    val_overlap: float = option(0.25, help="sliding-window overlap in validation", ge=0, lt=1, api=False, cli=False)
    min_delta: float = option(1e-3, help="smallest validation gain that counts", ge=0, api=False, cli=False)

    def __post_init__(self) -> None:
        self.patch_size = three_sides(self.patch_size)
        validate(self)


@dataclass
class Volume:
    """One preprocessed case ready for training: image [C, X, Y, Z] float32, label [X, Y, Z] as class indices."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


@dataclass
class TrainResult:
    score: float
    dice_per_class: dict[str, float]
    curve: list[dict[str, float]]
    steps: int
    seconds: float
    stopped_early: bool
    final_loss: float


@dataclass
class TaskData:
    """Train and validation volumes of a task plus the class names, in index order (background first)."""

    train: list[Volume]
    val: list[Volume]
    class_names: list[str]
    in_channels: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.train or not self.val:
            raise TrainingError(
                f"need at least one training and one validation case, got {len(self.train)} and {len(self.val)}"
            )
        self.in_channels = int(self.train[0].image.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded train/validation split with at least one case on each side."""
    if n < 2:
        raise TrainingError(f"a dataset needs at least 2 usable cases to train and validate, it has {n}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def pad_to(volume: Volume, patch: Sequence[int]) -> Volume:
    """Pad a case that is smaller than the patch (image with its minimum, label with background)."""
    shape = volume.label.shape
    pads = [(0, max(0, p - s)) for p, s in zip(patch, shape, strict=True)]
    if not any(after for _, after in pads):
        return volume
    image = np.stack([np.pad(c, pads, constant_values=float(c.min())) for c in volume.image])
    return Volume(volume.case_id, image, np.pad(volume.label, pads, constant_values=0))


class PatchSchedule:
    """The seeded sequence of (case, corner) patches: a pure function of the seed and the data."""

    def __init__(
        self,
        volumes: Sequence[Volume],
        patch: Sequence[int],
        batch_size: int,
        seed: int,
        foreground_ratio: float = 0.5,
    ) -> None:
        self.volumes = [pad_to(v, patch) for v in volumes]
        self.patch = tuple(patch)
        self.batch_size = batch_size
        self.foreground_ratio = foreground_ratio
        self.rng = np.random.default_rng(seed)
        # A bounded sample of foreground voxels per case keeps memory flat on large volumes.
        self.foreground = []
        for v in self.volumes:
            coords = np.argwhere(v.label > 0)
            if len(coords) > 4096:
                coords = coords[np.random.default_rng(seed).choice(len(coords), 4096, replace=False)]
            self.foreground.append(coords)

    def _corner(self, idx: int) -> tuple[int, ...]:
        shape = self.volumes[idx].label.shape
        fg = self.foreground[idx]
        if len(fg) and self.rng.random() < self.foreground_ratio:
            centre = fg[self.rng.integers(len(fg))]
        else:
            centre = [self.rng.integers(s) for s in shape]
        return tuple(int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, self.patch, shape, strict=True))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(self.batch_size):
            idx = int(self.rng.integers(len(self.volumes)))
            x, y, z = self._corner(idx)
            px, py, pz = self.patch
            v = self.volumes[idx]
            images.append(v.image[:, x : x + px, y : y + py, z : z + pz])
            labels.append(v.label[None, x : x + px, y : y + py, z : z + pz])
        return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(labels).astype(np.int64))


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AMX or AVX512-BF16).

    oneDNN also *accepts* bf16 on plain AVX512 (``_is_mkldnn_bf16_supported`` says yes) but emulates it:
    on such a CPU a unet3d training step under bf16 autocast took twice as long as in fp32 (0.69 s vs
    0.34 s, width 8, 32³ patches, 2 threads). Only Linux reports the flags; elsewhere the answer is no.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(text.split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def use_bf16(config: TrainConfig) -> bool:
    if config.precision == "fp32":
        return False
    if config.precision == "bf16":
        return True
    if config.device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16() and torch.backends.mkldnn.is_available()


def autocast(config: TrainConfig) -> contextlib.AbstractContextManager:
    if not use_bf16(config):
        return contextlib.nullcontext()
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    return torch.autocast(device_type, dtype=torch.bfloat16)


def resolve_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    return device


@torch.no_grad()
def evaluate(model: nn.Module, volumes: Sequence[Volume], n_classes: int, config: TrainConfig) -> np.ndarray:
    """Per-class foreground Dice, averaged over cases: array [n_classes - 1], NaN for classes never present.

    Inference runs in eval mode, i.e. BatchNorm uses its running statistics, which training has just
    re-estimated on the target data (see bnrank.engine.architectures.unet3d on Models Genesis' BN).
    """
    was_training = model.training
    model.eval()
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True, num_classes=n_classes)
    rows = []
    try:
        for v in volumes:
            image = torch.from_numpy(v.image[None]).float().to(config.device)
            with autocast(config):
                logits = sliding_window_inference(
                    image,
                    roi_size=config.patch_size,
                    sw_batch_size=config.batch_size,
                    predictor=model,
                    overlap=config.val_overlap,
                    mode="gaussian",
                )
            pred = logits.float().argmax(1, keepdim=True)
            label = torch.from_numpy(v.label[None, None].astype(np.int64)).to(config.device)
            rows.append(metric(y_pred=pred, y=label).cpu().numpy()[0])
    finally:
        model.train(was_training)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(rows), axis=0)


def mean_foreground(dice: np.ndarray) -> float:
    finite = dice[np.isfinite(dice)]
    return float(finite.mean()) if finite.size else 0.0


def windowed_score(curve: Sequence[dict[str, float]], window: int, upto_step: int | None = None) -> float:
    """Mean Dice of the last ``window`` validations (up to a step): robust to one noisy validation."""
    points = [p["dice"] for p in curve if upto_step is None or p["step"] <= upto_step]
    if not points:
        return 0.0
    return float(np.mean(points[-window:]))


def train(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    data: TaskData,
    config: TrainConfig,
    *,
    regulariser: Callable[[nn.Module], torch.Tensor] | None = None,
    on_progress: ProgressFn | None = None,
    label: str = "",
) -> TrainResult:
    """Train ``params`` of ``model`` with DiceCE on the seeded patch schedule; validate every ``val_every``.

    Stops at ``max_steps`` or after ``patience`` validations without improvement. A non-finite loss
    raises TrainingError naming the step, so a caller can fail the one candidate and go on.
    """
    device = resolve_device(config.device)
    model.to(device).train()
    params = [p for p in params if p.requires_grad]
    if not params:
        raise TrainingError("nothing to train: no parameter requires a gradient")
    optimiser = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    schedule = PatchSchedule(data.train, config.patch_size, config.batch_size, config.seed, config.foreground_ratio)
    torch.manual_seed(config.seed)

    curve: list[dict[str, float]] = []
    best, since_best, last_dice = -math.inf, 0, np.full(data.n_classes - 1, np.nan)
    step, loss_value, stopped_early = 0, float("nan"), False
    started = time.perf_counter()
    for step in range(1, config.max_steps + 1):
        x, y = schedule.next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(config):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        if regulariser is not None:
            loss = loss + regulariser(model)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(f"{label + ': ' if label else ''}loss became {loss_value} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

        if step % config.val_every == 0 or step == config.max_steps:
            last_dice = evaluate(model, data.val, data.n_classes, config)
            dice = mean_foreground(last_dice)
            curve.append(
                {
                    "step": step,
                    "dice": dice,
                    "loss": loss_value,
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
            if dice > best + config.min_delta:
                best, since_best = dice, 0
            else:
                since_best += 1
            if on_progress:
                on_progress(step, config.max_steps, f"{label} step {step}: loss {loss_value:.3f}, val Dice {dice:.3f}")
            if since_best >= config.patience and step < config.max_steps:
                stopped_early = True
                break
        elif on_progress and step % max(1, config.val_every // 2) == 0:
            on_progress(step, config.max_steps, f"{label} step {step}: loss {loss_value:.3f}")

    names = data.class_names[1:]
    return TrainResult(
        score=windowed_score(curve, config.score_window),
        dice_per_class={n: (float(d) if np.isfinite(d) else None) for n, d in zip(names, last_dice, strict=True)},
        curve=curve,
        steps=step,
        seconds=round(time.perf_counter() - started, 3),
        stopped_early=stopped_early,
        final_loss=loss_value,
    )
