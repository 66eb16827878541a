"""Validation: predicting the validation cases (or fixed patches) and scoring them, and reading scores off a curve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss
from monai.metrics import DiceMetric
from torch import nn

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.training.patches import PatchSchedule, TaskData, Volume
from bnrank.engine.training.precision import autocast

WHOLE_MULTIPLE = 32
"""Whole-volume validation pads each case to a multiple of this, enough for five stride-2 downsamplings."""
VAL_SEED_OFFSET = 7919


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

