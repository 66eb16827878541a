"""k-fold cross-validation splits (thesis §4.1: "we do k-fold cross-validation").

All usable cases of a task (its train and validation cases together) are ordered by case id, permuted
from the seed and cut into K near-equal folds; fold i validates on split i and trains on the others. The
folds are disjoint and together cover every case.
"""

from __future__ import annotations

import numpy as np

from bnrank.engine.errors import BNRankError
from bnrank.engine.training.patches import TaskData


class FoldError(BNRankError):
    """The fold count does not fit the dataset."""


def kfold_indices(n: int, k: int, seed: int) -> list[list[int]]:
    """``k`` disjoint, seeded, near-equal index sets covering ``range(n)`` (each sorted)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise FoldError(f"k-fold cross-validation needs at least 2 folds, got {k!r}")
    if k > n:
        raise FoldError(
            f"{k} folds need at least {k} cases (one per validation fold), but the dataset has {n} usable "
            f"case(s); use --folds {n} or fewer"
        )
    order = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(order, k)]


def fold_tasks(data: TaskData, k: int, seed: int) -> list[TaskData]:
    """One TaskData per fold: fold i's cases validate, all other cases train."""
    cases = sorted([*data.train, *data.val], key=lambda v: v.case_id)
    folds = kfold_indices(len(cases), k, seed)
    tasks = []
    for val_idx in folds:
        held = set(val_idx)
        tasks.append(
            TaskData(
                [c for i, c in enumerate(cases) if i not in held],
                [cases[i] for i in val_idx],
                list(data.class_names),
            )
        )
    return tasks
