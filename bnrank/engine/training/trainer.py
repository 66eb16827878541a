"""The resumable training loop: one candidate's run, its BatchNorm recalibration and its result."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import TrainingError
from bnrank.engine.training.patches import PatchSchedule, TaskData
from bnrank.engine.training.precision import autocast, resolve_device
from bnrank.engine.training.validation import Validation, Validator, windowed_score

ProgressFn = Callable[[int, int, str], None]
"""on_progress(step, total_steps, message); raising from it (e.g. on cancel) stops training."""

RECALIBRATION_SEED_OFFSET = 104729
"""Fixed validation and recalibration patches are drawn from seed + offset: apart from the training schedule."""


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

