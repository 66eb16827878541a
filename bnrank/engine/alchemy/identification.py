"""Identification (thesis §3.2.2, step 1): BN-only training, then the smallest γ mark redundant kernels.

BN-only here is norm-only evaluation: the γ of every normalisation kind with its own affine (BatchNorm,
InstanceNorm, GroupNorm, LayerNorm) are trained and ranked together; run.py refuses a network whose
normalisations lack their own affine before this step.

With every kernel frozen, BN-only training (the ranking's own procedure, ``bn_only_evaluate``) can only
rescale the features the checkpoint already has; channels the target task does not need are driven
towards γ ≈ 0. :func:`select_redundant` then marks the channels with |γ| under a threshold, or the lowest
fraction of all γ, ranking the whole network's channels together and never more than ``max_share`` of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bnrank.engine.architectures import Architecture
from bnrank.engine.bn_only import bn_only_evaluate
from bnrank.engine.configs.alchemy import DEFAULT_MAX_SHARE, AlchemyConfig, AlchemyError
from bnrank.engine.configs.gamma import DEFAULT_THRESHOLD
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.norms import norm_layers
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn, TrainResult

LABEL = "identification (BN-only)"


@dataclass
class Selection:
    """Which normalisation channels are marked redundant, and by which rule."""

    rule: str  # "threshold" | "fraction"
    threshold: float | None
    fraction: float | None
    total: int
    marked: int
    kept_after_cap: int
    capped: bool
    min_abs_gamma: float
    channels: dict[str, list[int]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("channels")
        return d


def select_redundant(
    model: nn.Module,
    *,
    threshold: float | None = None,
    fraction: float | None = None,
    max_share: float = DEFAULT_MAX_SHARE,
) -> tuple[Selection, list[str]]:
    """Mark channels by |γ| < threshold (default gamma.DEFAULT_THRESHOLD) or the lowest ``fraction``.

    Both rules rank all channels of the network together. More than ``max_share`` of all channels is
    never marked: a rule that marks more (say a threshold above every γ) keeps the ``max_share`` with
    the smallest |γ| and returns a warning, since re-initialising (nearly) every kernel would be
    training from scratch under another name.
    """
    if threshold is not None and fraction is not None:
        raise AlchemyError("give a threshold or a fraction of redundant kernels, not both")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise AlchemyError(f"fraction must be in (0, 1], got {fraction}")
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise AlchemyError(f"threshold must be a positive number, got {threshold}")
    if not 0.0 < max_share <= 1.0:
        raise AlchemyError(f"max_share must be in (0, 1], got {max_share}")
    layers = [(layer.name, layer.weight.detach().abs().reshape(-1).float().cpu()) for layer in norm_layers(model)]
    values = torch.cat([g for _, g in layers])
    total = values.numel()
    order = torch.sort(values, stable=True).indices
    if fraction is not None:
        rule, n_marked = "fraction", math.floor(fraction * total + 1e-9)
    else:
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        rule, n_marked = "threshold", int((values < threshold).sum())
    cap = math.floor(max_share * total + 1e-9)
    warnings: list[str] = []
    kept = n_marked
    if n_marked > cap:
        kept = cap
        what = f"|γ| < {threshold:g}" if rule == "threshold" else f"the lowest {fraction:.0%}"
        warnings.append(
            f"{what} marks {n_marked} of {total} kernels ({n_marked / total:.0%}); re-initialising that "
            f"many would discard most of the checkpoint, so only the {cap} with the smallest |γ| "
            f"(max share {max_share:.0%}) are re-initialised"
        )
    if kept == 0:
        what = f"|γ| < {threshold:g}" if rule == "threshold" else f"the lowest {fraction:g} of {total}"
        warnings.append(
            f"no kernel is marked redundant by {what} (smallest |γ| is {float(values.min()):.3f}), so none is "
            "re-initialised; short BN-only training seldom drives γ near 0: mark by --fraction instead, or "
            "give identification more steps"
        )
    chosen = set(order[:kept].tolist())
    channels: dict[str, list[int]] = {}
    offset = 0
    for name, g in layers:
        idx = [i for i in range(g.numel()) if offset + i in chosen]
        if idx:
            channels[name] = idx
        offset += g.numel()
    selection = Selection(
        rule=rule,
        threshold=threshold if rule == "threshold" else None,
        fraction=fraction,
        total=total,
        marked=n_marked,
        kept_after_cap=kept,
        capped=kept < n_marked,
        min_abs_gamma=float(values.min()),
        channels=channels,
    )
    return selection, warnings


def mark_redundant(model: nn.Module, options: AlchemyConfig) -> tuple[Selection, list[str]]:
    """:func:`select_redundant` with the rule and cap of ``options``, on the γ ``model`` has now."""
    return select_redundant(model, threshold=options.threshold, fraction=options.fraction, max_share=options.max_share)


@dataclass
class Identification:
    """What identification found: the BN-only run, the γ it left, and the kernels those γ mark redundant."""

    training: TrainResult
    gamma: dict[str, Any]
    selection: Selection
    warnings: list[str]


def identify(
    model: nn.Module,
    arch: Architecture,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig,
    *,
    on_progress: ProgressFn | None = None,
) -> Identification:
    """BN-only training of ``model`` in place (budget: ``options.identify_config(config)``), then the marks.

    The kernels stay as the checkpoint has them; only γ/β and the (re-initialised) head train, so the
    selection reflects which of the checkpoint's features the target task uses.
    """
    training, _, gamma = bn_only_evaluate(
        model, arch, data, options.identify_config(config), on_progress=on_progress, label=LABEL
    )
    selection, warnings = mark_redundant(model, options)
    return Identification(training, gamma, selection, warnings)
