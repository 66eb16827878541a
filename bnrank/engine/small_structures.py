"""The score and norm-only budget for small structures: a rule that keeps a ranking from collapsing to all-zero.

At a ranking's short budget the hard Dice of a structure under ~2 % of the volume is often exactly 0 for every
candidate, and an order of zeros says nothing. Below that share the cascade scores by soft Dice (the softmax's
overlap, never exactly 0) and stretches the norm-only budget by sqrt(share threshold / foreground share), at most
:data:`MAX_FACTOR` times, so the rarer the structure, the more patches with it the evaluation sees. The threshold
and the stretch are the rule's first setting; benchmark v2's tuning task chooses the score among dice and soft_dice
by its pre-registered decision rule.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.training.patches import TaskData

SMALL_SHARE = 0.02
MAX_FACTOR = 4.0


def smallest_foreground_share(data: TaskData) -> float | None:
    """The share of training voxels of the rarest foreground class that occurs at all; None with none present."""
    counts = np.zeros(data.n_classes, dtype=np.int64)
    total = 0
    for vol in data.train:
        counts += np.bincount(np.asarray(vol.label, dtype=np.int64).ravel(), minlength=data.n_classes)[: data.n_classes]
        total += int(np.asarray(vol.label).size)
    present = [int(c) for c in counts[1:] if c > 0]
    return min(present) / total if present and total else None


def small_structure_rule(config: TrainConfig, share: float | None) -> tuple[TrainConfig, dict[str, Any]]:
    """The stage's config for a task whose rarest structure has ``share`` of the voxels, and what was decided."""
    evidence: dict[str, Any] = {"smallest_foreground_share": share, "threshold": SMALL_SHARE, "small": False}
    if share is None or share >= SMALL_SHARE:
        evidence.update(score=config.score, max_steps=config.max_steps)
        return config, evidence
    factor = min(MAX_FACTOR, math.sqrt(SMALL_SHARE / share))
    score = "soft_dice" if config.score == "dice" else config.score
    steps = max(config.max_steps, math.ceil(config.max_steps * factor))
    evidence.update(small=True, score=score, max_steps=steps, budget_factor=round(factor, 3))
    return replace(config, score=score, max_steps=steps), evidence
