"""Seeded k-fold splits of a task (engine/folds.py)."""

from __future__ import annotations

import pytest

from bnrank.engine.folds import FoldError, fold_tasks, kfold_indices
from tests.engine.tiny import blob_task


@pytest.mark.parametrize(("n", "k"), [(2, 2), (5, 2), (7, 3), (10, 10), (12, 5)])
def test_folds_are_disjoint_and_cover_every_case(n: int, k: int) -> None:
    folds = kfold_indices(n, k, seed=3)
    assert len(folds) == k and all(folds)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(n))  # covering, and no index twice (disjoint)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert folds == kfold_indices(n, k, seed=3)


def test_fold_tasks_hold_out_each_fold_once() -> None:
    task = blob_task(n=5)
    tasks = fold_tasks(task, 3, seed=0)
    every = sorted(v.case_id for v in [*task.train, *task.val])
    assert sorted(v.case_id for t in tasks for v in t.val) == every
    for t in tasks:
        assert not {v.case_id for v in t.train} & {v.case_id for v in t.val}
        assert sorted(v.case_id for v in [*t.train, *t.val]) == every


def test_too_many_folds_is_a_clear_error() -> None:
    with pytest.raises(FoldError, match=r"5 folds need at least 5 cases.*has 4"):
        fold_tasks(blob_task(n=4), 5, seed=0)
    with pytest.raises(FoldError, match="at least 2 folds"):
        kfold_indices(4, 1, seed=0)
