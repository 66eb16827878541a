"""The training loop shared by BN-only evaluation, fine-tuning and alchemy.

Fairness is the point of a ranking: every candidate is trained on the same cases, the same patches in the
same order (a schedule drawn from the seed and the data alone) and validated on the same cases. What
differs between two candidates' runs is their weights, nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss
from monai.metrics import DiceMetric
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnrank.engine.errors import TrainingError
from bnrank.engine.options import option, three_sides, validate

ProgressFn = Callable[[int, int, str], None]
"""on_progress(step, total_steps, message); raising from it (e.g. on cancel) stops training."""

VALIDATION_MODES = ("sliding_window", "whole", "patches")
SCORES = ("dice", "soft_dice", "dice_ce")
WHOLE_MULTIPLE = 32
"""Whole-volume validation pads each case to a multiple of this, enough for five stride-2 downsamplings."""
VAL_SEED_OFFSET = 7919
RECALIBRATION_SEED_OFFSET = 104729
"""Fixed validation and recalibration patches are drawn from seed + offset: apart from the training schedule."""


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
    validation: str = option(
        "sliding_window",
        help="how validation predicts: a sliding window over each validation case (sliding_window), each case "
        "padded and predicted whole in one eval-mode pass (whole), or fixed seeded patches of the validation cases "
        "(patches)",
        choices=VALIDATION_MODES,
    )
    validate_at: str = option(
        "every",
        help="validate every val_every steps, patience applies (every), or only where the score is taken: the last "
        "score_window validations before each scoring step (scored; training loss is still logged every val_every)",
        choices=("every", "scored"),
    )
    val_patches: int = option(8, help="fixed validation patches when validation is 'patches'", ge=1, le=4096)
    score: str = option(
        "dice",
        help="the score: hard Dice (dice), soft Dice of the softmax, which still orders candidates stuck at Dice 0 "
        "(soft_dice), or 1 - validation DiceCE (dice_ce); hard Dice is reported beside it",
        choices=SCORES,
    )
    bn_recalibration: int = option(
        0,
        help="before each validation, re-estimate BatchNorm running statistics on this many batches of fixed "
        "training patches (train mode, momentum None, no gradient), so no source statistics reach a score; 0 = off",
        ge=0,
        le=1000,
    )

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
    dice: float | None = None
    """Hard Dice over the same validations as the score (equal to it when the score is hard Dice)."""
    case_scores: list[list[float | None]] = field(default_factory=list)
    """Per validation unit (case, or fixed patch) score at each of the validations behind the score."""


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


def point_value(point: dict[str, float], key: str = "score") -> float | None:
    """A curve point's score (or another key); None on a point without a validation (a training-loss point).

    Curves written before the score existed carry only "dice", which then is the score.
    """
    if key in point:
        return point[key]
    return point.get("dice") if key == "score" else None


def windowed_score(
    curve: Sequence[dict[str, float]], window: int, upto_step: int | None = None, key: str = "score"
) -> float:
    """Mean score of the last ``window`` validations (up to a step): robust to one noisy validation."""
    points = [
        v for p in curve if (upto_step is None or p["step"] <= upto_step) and (v := point_value(p, key)) is not None
    ]
    if not points:
        return 0.0
    return float(np.mean(points[-window:]))


@dataclass
class Validation:
    """One validation: aggregates as reported, and one value per validation unit (case or fixed patch)."""

    dice_per_class: np.ndarray
    dice: float
    score: float
    unit_scores: np.ndarray


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


class Validator:
    """The fixed inputs of a run's validations and the one way it predicts and scores them.

    ``sliding_window`` is the original validation; ``whole`` pads each case to a multiple of WHOLE_MULTIPLE and
    predicts it in one forward pass; ``patches`` predicts ``val_patches`` patches drawn once from the validation
    cases (seed + VAL_SEED_OFFSET). Inference is in eval mode, so BatchNorm uses its running statistics.
    """

    def __init__(self, data: TaskData, config: TrainConfig) -> None:
        self.config = config
        self.n_classes = data.n_classes
        self.units: list[tuple[torch.Tensor, torch.Tensor]] = []
        if config.validation == "patches":
            sched = PatchSchedule(
                data.val, config.patch_size, config.val_patches, config.seed + VAL_SEED_OFFSET, config.foreground_ratio
            )
            x, y = sched.next_batch()
            self.units = [(x[i : i + 1], y[i : i + 1]) for i in range(len(x))]
        else:
            for v in data.val:
                image = torch.from_numpy(v.image[None]).float()
                self.units.append((image, torch.from_numpy(v.label[None, None].astype(np.int64))))
        self.hard = DiceMetric(
            include_background=False, reduction="none", ignore_empty=True, num_classes=data.n_classes
        )
        self.soft = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, reduction="none")
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def _predict(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        config = self.config
        image = image.to(config.device)
        with autocast(config):
            if config.validation == "sliding_window":
                return sliding_window_inference(
                    image,
                    roi_size=config.patch_size,
                    sw_batch_size=config.batch_size,
                    predictor=model,
                    overlap=config.val_overlap,
                    mode="gaussian",
                ).float()
            if config.validation == "patches":
                return torch.cat([model(x).float() for x in image.split(config.batch_size)])
            shape = image.shape[2:]
            pads = [(-s) % WHOLE_MULTIPLE for s in shape]
            padded = torch.nn.functional.pad(image, [p for pad in reversed(pads) for p in (0, pad)], mode="replicate")
            logits = model(padded).float()
        if logits.shape[2:] != padded.shape[2:]:
            logits = torch.nn.functional.interpolate(logits, size=padded.shape[2:], mode="trilinear")
        return logits[..., : shape[0], : shape[1], : shape[2]]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> Validation:
        was_training = model.training
        model.eval()
        score_name = self.config.score
        hard_rows, soft_rows, dice_ce = [], [], []
        try:
            if self.config.validation == "patches":  # the fixed patches go through in batches of batch_size
                predicted = self._predict(model, torch.cat([x for x, _ in self.units])).split(1)
            else:
                predicted = (self._predict(model, x) for x, _ in self.units)
            for logits, (_, label) in zip(predicted, self.units, strict=True):
                label = label.to(logits.device)
                hard_rows.append(self.hard(y_pred=logits.argmax(1, keepdim=True), y=label).cpu().numpy()[0])
                if score_name == "soft_dice":
                    present = torch.stack([(label == c).any() for c in range(1, self.n_classes)]).cpu().numpy()
                    soft = 1.0 - self.soft(logits, label).reshape(-1).cpu().numpy()
                    soft_rows.append(np.where(present, soft, np.nan))
                elif score_name == "dice_ce":
                    dice_ce.append(1.0 - float(self.dice_ce(logits, label)))
        finally:
            model.train(was_training)
            self.hard.reset()  # a cumulative metric: without this it keeps every validation's rows
        hard = np.stack(hard_rows)
        dice_per_class = _nanmean(hard, axis=0)
        dice = mean_foreground(dice_per_class)
        if self.config.score == "dice":
            score, units = dice, _nanmean(hard, axis=1)
        elif self.config.score == "soft_dice":
            soft = np.stack(soft_rows)
            score, units = mean_foreground(_nanmean(soft, axis=0)), _nanmean(soft, axis=1)
        else:
            score, units = float(np.mean(dice_ce)), np.asarray(dice_ce)
        return Validation(dice_per_class, dice, score, units)


def recalibration_batches(data: TaskData, config: TrainConfig) -> list[torch.Tensor]:
    """The fixed training patches BatchNorm statistics are re-estimated on (the same for every candidate)."""
    if not config.bn_recalibration:
        return []
    sched = PatchSchedule(
        data.train,
        config.patch_size,
        config.batch_size,
        config.seed + RECALIBRATION_SEED_OFFSET,
        config.foreground_ratio,
    )
    return [sched.next_batch()[0] for _ in range(config.bn_recalibration)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor], config: TrainConfig) -> None:
    """Replace every BatchNorm's running statistics by their plain average over ``batches`` under today's weights.

    Train-mode forward passes with momentum None (a cumulative average) and no gradient; the global RNG is left
    as it was (dropout would otherwise shift the training run), and the momenta are restored afterwards.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns or not batches:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    devices = [torch.device(config.device)] if config.device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        try:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            model.train()
            for x in batches:
                with autocast(config):
                    model(x.to(config.device))
        finally:
            for m, momentum in zip(bns, momenta, strict=True):
                m.momentum = momentum
            model.train(was_training)


class Trainer:
    """One run of the training loop, resumable: ``run(until)`` trains up to a step and can be called again.

    The patch schedule, the optimiser and (after a first ``run``) the torch RNG state are kept in the trainer, so
    training to step a and then on to step b is the same run as training to b at once. Validations happen at
    ``validation_steps``: every ``val_every`` steps (and at each of ``score_at``) when ``validate_at`` is
    "every", else only the ``score_window`` validations before the end and before each of ``score_at``.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[nn.Parameter],
        data: TaskData,
        config: TrainConfig,
        *,
        regulariser: Callable[[nn.Module], torch.Tensor] | None = None,
        on_progress: ProgressFn | None = None,
        label: str = "",
        score_at: Iterable[int] = (),
        early_stop: bool = True,
        validator: Validator | None = None,
        recalibration: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).train()
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise TrainingError("nothing to train: no parameter requires a gradient")
        self.data, self.config, self.label = data, config, label
        self.regulariser, self.on_progress = regulariser, on_progress
        self.optimiser = torch.optim.Adam(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.schedule = PatchSchedule(
            data.train, config.patch_size, config.batch_size, config.seed, config.foreground_ratio
        )
        torch.manual_seed(config.seed)
        self.validator = validator or Validator(data, config)
        self.recalibration = recalibration_batches(data, config) if recalibration is None else list(recalibration)
        self.ends = sorted({min(int(s), config.max_steps) for s in score_at} | {config.max_steps})
        self.early_stop = early_stop and config.validate_at == "every"
        self.step, self.seconds, self.loss_value, self.stopped_early = 0, 0.0, float("nan"), False
        self.curve: list[dict[str, float]] = []
        self.validations: list[tuple[int, Validation]] = []
        self.best, self.since_best = -math.inf, 0
        self._losses: list[float] = []
        self._rng = self._rng_state()  # this run's RNG stream starts here, whatever runs before its first step
        self._scored = {
            e - j * config.val_every
            for e in self.ends
            for j in range(config.score_window)
            if e - j * config.val_every >= 1
        }

    def validates_at(self, step: int) -> bool:
        if self.config.validate_at == "scored":
            return step in self._scored
        return step % self.config.val_every == 0 or step in self.ends

    def _rng_devices(self) -> list[int]:
        return [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []

    def _rng_state(self) -> list[torch.Tensor]:
        return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in self._rng_devices()]

    def run(self, until: int | None = None) -> Trainer:
        """Train up to step ``until`` (default max_steps), or less if patience stops the run first."""
        until = self.config.max_steps if until is None else min(until, self.config.max_steps)
        torch.set_rng_state(self._rng[0])  # continue this run's RNG stream, not whatever ran in between
        for dev, state in zip(self._rng_devices(), self._rng[1:], strict=True):
            torch.cuda.set_rng_state(state, dev)
        started = time.perf_counter()
        try:
            while self.step < until and not self.stopped_early:
                self.step += 1
                x, y = self.schedule.next_batch()
                self._after_step(self._train_step(x.to(self.device, non_blocking=True), y.to(self.device)), started)
        finally:
            self.seconds += time.perf_counter() - started
            self._rng = self._rng_state()
        return self

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast(self.config):
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        if self.regulariser is not None:
            loss = loss + self.regulariser(self.model)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"{self.label + ': ' if self.label else ''}loss became {loss_value} at step {self.step}"
            )
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return loss_value

    def validate(self) -> Validation:
        """Validate now (after re-estimating BatchNorm statistics, if configured); the model is left as it was."""
        recalibrate_batchnorm(self.model, self.recalibration, self.config)
        return self.validator(self.model)

    def _after_step(self, loss_value: float, started: float) -> None:
        config, step = self.config, self.step
        self.loss_value = loss_value
        self._losses.append(loss_value)
        point: dict[str, float] = {"step": step, "loss": loss_value}
        if self.validates_at(step):
            val = self.validate()
            self.validations.append((step, val))
            point.update(dice=val.dice, score=val.score)
        elif not (config.validate_at == "scored" and step % config.val_every == 0):
            if self.on_progress and step % max(1, config.val_every // 2) == 0:
                self.on_progress(step, config.max_steps, f"{self.label} step {step}: loss {loss_value:.3f}")
            return
        point["loss_mean"] = float(np.mean(self._losses))
        point["seconds"] = round(self.seconds + time.perf_counter() - started, 3)
        self._losses = []
        self.curve.append(point)
        if "score" not in point:
            if self.on_progress:
                self.on_progress(step, config.max_steps, f"{self.label} step {step}: loss {loss_value:.3f}")
            return
        score = point["score"]
        if score > self.best + config.min_delta:
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1
        if self.on_progress:
            shown = f"val Dice {val.dice:.3f}" + (f", {config.score} {score:.3f}" if config.score != "dice" else "")
            self.on_progress(step, config.max_steps, f"{self.label} step {step}: loss {loss_value:.3f}, {shown}")
        if self.early_stop and self.since_best >= config.patience and step < config.max_steps:
            self.stopped_early = True

    def score(self, upto_step: int | None = None) -> float:
        return windowed_score(self.curve, self.config.score_window, upto_step)

    def result(self) -> TrainResult:
        window = self.validations[-self.config.score_window :]
        last = window[-1][1].dice_per_class if window else np.full(self.data.n_classes - 1, np.nan)
        names = self.data.class_names[1:]
        return TrainResult(
            score=self.score(),
            dice_per_class={n: (float(d) if np.isfinite(d) else None) for n, d in zip(names, last, strict=True)},
            curve=self.curve,
            steps=self.step,
            seconds=round(self.seconds, 3),
            stopped_early=self.stopped_early,
            final_loss=self.loss_value,
            dice=windowed_score(self.curve, self.config.score_window, key="dice"),
            case_scores=[[float(u) if np.isfinite(u) else None for u in val.unit_scores] for _, val in window],
        )


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
    """Train ``params`` of ``model`` with DiceCE on the seeded patch schedule, validating as the config says.

    Stops at ``max_steps`` or (validating every ``val_every``) after ``patience`` validations without
    improvement. A non-finite loss raises TrainingError naming the step, so a caller can fail the one
    candidate and go on.
    """
    trainer = Trainer(model, params, data, config, regulariser=regulariser, on_progress=on_progress, label=label)
    return trainer.run().result()


def _signature(model: nn.Module) -> tuple:
    return tuple((n, tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()) + tuple(
        (n, tuple(b.shape)) for n, b in model.named_buffers()
    )


def can_train_together(trainers: Sequence[Trainer]) -> bool:
    """Same network layout, same trainable set, same config and step, no regulariser: one stacked run fits."""
    first = trainers[0]
    return all(
        t.config == first.config
        and t.step == first.step
        and t.regulariser is None
        and _signature(t.model) == _signature(first.model)
        for t in trainers
    )


def train_together(trainers: Sequence[Trainer], until: int | None = None) -> dict[int, TrainingError]:
    """Advance several candidates of one architecture in one vmapped network (torch.func), up to step ``until``.

    Every trainer sees the same patches at the same steps anyway, so one batch feeds all of them; their weights,
    buffers and Adam states are stacked along a new leading axis, the forward pass is ``vmap`` over
    ``functional_call``, and each candidate's DiceCE is summed, so each gets exactly its own gradient (Adam is
    element-wise, so the stacked optimiser is each candidate's own). Validation, patience and curves stay each
    trainer's: weights are copied back before a validation and at the end, with the optimiser states, so a
    trainer can go on alone afterwards. Returns the trainers (by index) whose loss went non-finite: they are
    stopped and the others go on.
    """
    from torch.func import functional_call, stack_module_state, vmap

    if not can_train_together(trainers):
        raise TrainingError("these candidates cannot be trained together (different layouts, configs or steps)")
    first, config = trainers[0], trainers[0].config
    until = config.max_steps if until is None else min(until, config.max_steps)
    models = [t.model for t in trainers]
    params, buffers = stack_module_state(models)
    trainable = [n for n, p in models[0].named_parameters() if p.requires_grad]
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    optimiser = torch.optim.Adam([params[n] for n in trainable], lr=config.lr, weight_decay=config.weight_decay)
    named = [dict(m.named_parameters()) for m in models]
    states = [[t.optimiser.state.get(named[i][n]) for i, t in enumerate(trainers)] for n in trainable]
    for n, per in zip(trainable, states, strict=True):
        if all(per):
            optimiser.state[params[n]] = {
                k: torch.stack([s[k] for s in per]) if k != "step" else per[0][k].clone() for k in per[0]
            }
    base = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    stacked_forward = vmap(forward, in_dims=(0, 0, None), randomness="different")
    active = [not t.stopped_early for t in trainers]
    failed: dict[int, TrainingError] = {}

    def sync() -> None:
        with torch.no_grad():
            for i, m in enumerate(models):
                if not active[i]:
                    continue
                for n, p in m.named_parameters():
                    p.copy_(params[n][i])
                for n, b in m.named_buffers():
                    b.copy_(buffers[n][i])

    started, step = time.perf_counter(), first.step
    try:
        while step < until and any(active):
            step += 1
            x, y = first.schedule.next_batch()
            for t in trainers[1:]:  # identical schedules: keep theirs where it would be, without drawing again
                t.schedule.rng.bit_generator.state = first.schedule.rng.bit_generator.state
            x, y = x.to(first.device, non_blocking=True), y.to(first.device)
            with autocast(config):
                logits = stacked_forward(params, buffers, x)
            losses, total = [], None
            for i, t in enumerate(trainers):
                if not active[i]:
                    losses.append(float("nan"))
                    continue
                t.step = step
                loss = t.loss_fn(logits[i].float(), y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    failed[i] = TrainingError(
                        f"{t.label + ': ' if t.label else ''}loss became {value} at step {t.step}"
                    )
                    active[i] = False
                    continue
                losses.append(value)
                total = loss if total is None else total + loss
            if total is not None:
                optimiser.zero_grad(set_to_none=True)
                total.backward()
                optimiser.step()
            if any(active[i] and t.validates_at(t.step) for i, t in enumerate(trainers)):
                sync()
            elapsed = (time.perf_counter() - started) / len(trainers)
            for i, t in enumerate(trainers):
                if active[i]:
                    t._after_step(losses[i], time.perf_counter() - elapsed)
                    if t.stopped_early:
                        active[i] = False
    finally:
        sync()  # those still active; one stopped early was synced at the validation that stopped it
        share = (time.perf_counter() - started) / len(trainers)
        for i, t in enumerate(trainers):
            t.seconds += share
            if not active[i]:
                continue
            p_of = named[i]
            for n in trainable:
                state = optimiser.state.get(params[n])
                if state:
                    t.optimiser.state[p_of[n]] = {
                        k: (v[i].clone() if k != "step" else v.clone()) for k, v in state.items()
                    }
    return failed
