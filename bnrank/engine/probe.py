"""The γ-clipping probe (thesis §3.2.1, Fig. 3.1): do small γ really mark unimportant kernels?

After BN-only training, for each threshold T the γ of every channel with |γ| < T is set to zero and the
validation Dice measured; then the same *number* of channels, drawn at random (seeded, averaged over a
few draws), is zeroed instead. If small γ mark redundant kernels, clipping by threshold costs little
Dice while clipping as many at random costs a lot. γ are restored after every evaluation, so every
measurement starts from the same BN-only-trained network.

Every normalisation kind is probed (bnrank.engine.norms): γ per channel for BatchNorm, InstanceNorm and
GroupNorm, per feature (flattened ``normalized_shape``) for LayerNorm, and the identity affines norm-only
training inserts after a normalisation without one are clipped like the layer's own (they are the only γ
such a layer has). ``bn_only`` of the result records which kinds were trained and where affines were inserted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnrank.engine.alchemy import AlchemyError, prepare_model, require_norms
from bnrank.engine.architectures import Architecture
from bnrank.engine.bn_only import norm_only_evaluate
from bnrank.engine.configs.probe import DEFAULT_DRAWS, DEFAULT_THRESHOLDS
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.gamma import has_gamma
from bnrank.engine.norms import norm_layers
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn
from bnrank.engine.training.validation import evaluate, mean_foreground


@dataclass
class ProbeRow:
    threshold: float
    n_clipped: int
    share_clipped: float
    dice_threshold: float
    dice_per_class_threshold: dict[str, float | None]
    dice_random: float
    dice_random_std: float
    dice_random_draws: list[float]


@dataclass
class ProbeResult:
    dice_unclipped: float
    dice_per_class_unclipped: dict[str, float | None]
    n_channels: int
    draws: int
    rows: list[ProbeRow]
    bn_only: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    architecture: str | None = None
    checkpoint: str | None = None
    dataset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gammas(model: nn.Module) -> list[torch.Tensor]:
    return [layer.weight for layer in norm_layers(model)]


@torch.no_grad()
def _zero(params: Sequence[torch.Tensor], flat_idx: np.ndarray) -> None:
    """Zero the channels with these indices into the network-wide concatenation of γ."""
    offset = 0
    for w in params:
        n = w.numel()
        local = flat_idx[(flat_idx >= offset) & (flat_idx < offset + n)] - offset
        if local.size:
            w.view(-1)[torch.as_tensor(local, dtype=torch.long, device=w.device)] = 0.0
        offset += n


@torch.no_grad()
def _restore(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    for w, s in zip(params, saved, strict=True):
        w.copy_(s)


def clip_probe(
    model: nn.Module,
    data: TaskData,
    config: TrainConfig,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    draws: int = DEFAULT_DRAWS,
    on_progress: ProgressFn | None = None,
) -> ProbeResult:
    """Clip an (already BN-only-trained) network's γ by threshold and at random; Dice for each."""
    require_norms(model, "the γ-clipping probe")
    if not has_gamma(model):
        raise AlchemyError(
            "the γ-clipping probe needs γ, but this network's normalisation layers have no affine; train it "
            "norm-only first (gamma_probe does, inserting identity affines after them)"
        )
    thresholds = sorted({float(t) for t in thresholds})
    if not thresholds or any(not np.isfinite(t) or t <= 0 for t in thresholds):
        raise AlchemyError(f"thresholds must be positive numbers, got {list(thresholds)}")
    if draws < 1:
        raise AlchemyError(f"draws must be at least 1, got {draws}")
    started = time.perf_counter()
    names = data.class_names[1:]
    params = _gammas(model)
    saved = [w.detach().clone() for w in params]
    values = torch.cat([s.reshape(-1).abs().float().cpu() for s in saved]).numpy()
    total = values.size
    n_evals = 1 + len(thresholds) * (1 + draws)
    done = [0]

    def score(what: str) -> tuple[float, dict[str, float | None]]:
        dice = evaluate(model, data.val, data.n_classes, config)
        done[0] += 1
        if on_progress:
            on_progress(done[0], n_evals, f"probe: {what}, Dice {mean_foreground(dice):.3f}")
        per_class = {n: (float(d) if np.isfinite(d) else None) for n, d in zip(names, dice, strict=True)}
        return mean_foreground(dice), per_class

    try:
        base, base_per_class = score("unclipped")
        rows = []
        for k, t in enumerate(thresholds):
            below = np.flatnonzero(values < t)
            n = int(below.size)
            if n == 0:  # nothing to clip: both measurements are the unclipped network
                done[0] += 1 + draws
                rows.append(ProbeRow(t, 0, 0.0, base, dict(base_per_class), base, 0.0, [base] * draws))
                continue
            _zero(params, below)
            dice_t, per_class_t = score(f"|γ| < {t:g} ({n / total:.1%})")
            _restore(params, saved)
            rng = np.random.default_rng([config.seed, k])
            random_scores = []
            for d in range(draws):
                _zero(params, rng.choice(total, size=n, replace=False))
                random_scores.append(score(f"random {n} ({d + 1}/{draws})")[0])
                _restore(params, saved)
            rows.append(
                ProbeRow(
                    threshold=t,
                    n_clipped=n,
                    share_clipped=n / total,
                    dice_threshold=dice_t,
                    dice_per_class_threshold=per_class_t,
                    dice_random=float(np.mean(random_scores)),
                    dice_random_std=float(np.std(random_scores)),
                    dice_random_draws=random_scores,
                )
            )
    finally:
        _restore(params, saved)
    return ProbeResult(
        dice_unclipped=base,
        dice_per_class_unclipped=base_per_class,
        n_channels=total,
        draws=draws,
        rows=rows,
        seconds=round(time.perf_counter() - started, 3),
        config=asdict(config),
    )


def gamma_probe(
    model: nn.Module,
    arch: Architecture,
    data: TaskData,
    config: TrainConfig,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    draws: int = DEFAULT_DRAWS,
    on_progress: ProgressFn | None = None,
) -> ProbeResult:
    """Norm-only training (as in a ranking), then the clipping probe on the trained network."""
    require_norms(model, "the γ-clipping probe")
    started = time.perf_counter()
    train_steps = config.max_steps
    n_evals = 1 + len(set(thresholds)) * (1 + draws)

    def train_progress(step: int, total: int, message: str) -> None:
        if on_progress:
            on_progress(step, train_steps + n_evals, f"[BN-only] {message.strip()}")

    result, _, after, trained = norm_only_evaluate(
        model, arch, data, config, on_progress=train_progress, label="BN-only"
    )

    def probe_progress(step: int, total: int, message: str) -> None:
        if on_progress:
            on_progress(train_steps + step, train_steps + total, f"[probe {step}/{total}] {message}")

    probe = clip_probe(model, data, config, thresholds, draws=draws, on_progress=probe_progress)
    probe.bn_only = {
        "score": result.score,
        "dice_per_class": result.dice_per_class,
        "curve": result.curve,
        "steps": result.steps,
        "gamma": after,
        "norm": trained.to_dict(),
    }
    probe.seconds = round(time.perf_counter() - started, 3)
    return probe


def probe_checkpoint(
    checkpoint: str | Path,
    data: TaskData,
    config: TrainConfig,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    draws: int = DEFAULT_DRAWS,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    head: str | None = None,
    dataset_name: str = "",
    on_progress: ProgressFn | None = None,
) -> ProbeResult:
    model, arch, _ = prepare_model(
        checkpoint, data, "finetune", config.seed, architecture=architecture, network_def=network_def, head=head
    )
    result = gamma_probe(model, arch, data, config, thresholds, draws=draws, on_progress=on_progress)
    result.architecture = arch.name
    result.checkpoint = str(checkpoint)
    result.dataset = dataset_name
    return result
