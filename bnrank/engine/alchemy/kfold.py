"""k-fold cross-validation of alchemy: every case validates once, each fold from the checkpoint afresh.

Kept apart from the single run (checkpoint.py), which it calls once per fold: what it adds is the split,
the mean and spread over folds, and all-or-nothing output (every fold's weights are staged and moved into
place together once the last fold has succeeded).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnrank.engine.alchemy.checkpoint import alchemy_checkpoint, metadata
from bnrank.engine.alchemy.run import AlchemyResult, Phases, planned_steps
from bnrank.engine.architectures import Architecture
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.alchemy import AlchemyConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.folds import fold_tasks
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn


def fold_path(out: str | Path, fold: int) -> Path:
    """``w.safetensors`` → ``w.fold<i>.safetensors``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.fold{fold}{out.suffix or '.safetensors'}")


@dataclass
class FoldsResult:
    folds: list[AlchemyResult]
    dice_mean: float
    dice_std: float
    per_class_mean: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_folds": len(self.folds),
            "dice_per_fold": [f.score for f in self.folds],
            "dice_mean": self.dice_mean,
            "dice_std": self.dice_std,
            "dice_per_class_mean": self.per_class_mean,
            "folds": [f.to_dict() for f in self.folds],
        }


def alchemy_kfold(
    checkpoint: str | Path,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig | None = None,
    *,
    folds: int,
    out: str | Path | None = None,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    head: str | None = None,
    dataset_name: str = "",
    on_progress: ProgressFn | None = None,
) -> FoldsResult:
    """k-fold cross-validation: all cases of ``data`` split ``folds`` ways (seeded); fold i validates on
    split i and trains on the rest, each from the checkpoint afresh.

    With ``out`` the weights of fold i go to ``<out stem>.fold<i>.safetensors``, all moved into place
    together once every fold has succeeded (a failing fold leaves none of them behind).
    """
    options = options or AlchemyConfig()
    tasks = fold_tasks(data, folds, config.seed)
    per_fold = planned_steps(config, options)
    phases = Phases(on_progress, per_fold * len(tasks))
    results: list[AlchemyResult] = []
    staging = None
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".alchemy-", dir=Path(out).parent))
    try:
        staged: list[tuple[Path, Path]] = []
        for i, task in enumerate(tasks):
            phases.prefix = f"fold {i + 1}/{len(tasks)} "
            phases.offset = i * per_fold
            result, model = alchemy_checkpoint(
                checkpoint,
                task,
                config,
                options,
                architecture=architecture,
                network_def=network_def,
                head=head,
                dataset_name=dataset_name,
                _phases=phases,
            )
            if staging is not None:
                target = fold_path(out, i)
                tmp = save_weights(model, staging / target.name, metadata(result))
                staged.append((tmp, target))
                result.weights = str(target)
            results.append(result)
        for tmp, target in staged:
            tmp.replace(target)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    scores = np.array([r.score for r in results], dtype=float)
    classes = list(results[0].dice_per_class)
    per_class: dict[str, float | None] = {}
    for c in classes:
        vals = [r.dice_per_class[c] for r in results if r.dice_per_class.get(c) is not None]
        per_class[c] = float(np.mean(vals)) if vals else None
    return FoldsResult(
        folds=results,
        dice_mean=float(scores.mean()),
        dice_std=float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
        per_class_mean=per_class,
    )
