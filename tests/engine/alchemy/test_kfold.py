"""k-fold alchemy (alchemy/kfold.py): one run per fold, every fold's weights or none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnrank.engine.alchemy import AlchemyConfig, alchemy_kfold, fold_path
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.fitting import load_checkpoint
from tests.engine.tiny import blob_task, narrow_model, small_config


def test_kfold_reports_each_fold_and_writes_per_fold_weights(tmp_path: Path) -> None:
    task = blob_task(n=4)
    ckpt = save_weights(narrow_model("unet3d"), tmp_path / "c.safetensors")
    out = tmp_path / "w.safetensors"
    res = alchemy_kfold(
        ckpt, task, small_config(max_steps=2, val_every=2), AlchemyConfig(mode="finetune"), folds=2, out=out
    )
    d = res.to_dict()
    assert d["n_folds"] == 2 and len(d["dice_per_fold"]) == 2
    assert d["dice_mean"] == pytest.approx(np.mean(d["dice_per_fold"]))
    assert d["dice_std"] == pytest.approx(np.std(d["dice_per_fold"], ddof=1))
    val = [c for f in res.folds for c in f.val_cases]
    assert sorted(val) == sorted(v.case_id for v in [*task.train, *task.val])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "w.fold0.safetensors", "w.fold1.safetensors"]
    assert fold_path(out, 1) == tmp_path / "w.fold1.safetensors"
    load_checkpoint(fold_path(out, 0))
