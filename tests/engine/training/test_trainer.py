"""The training loop (engine/training/): the patch schedule, padding, divergence and precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnrank.engine.architectures import build_model
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import TrainingError
from bnrank.engine.training import precision
from bnrank.engine.training.patches import PatchSchedule
from bnrank.engine.training.trainer import train
from tests.engine.tiny import WIDTH, blob_task, small_config


def test_patch_schedule_is_a_function_of_seed_and_data() -> None:
    task = blob_task()
    a = PatchSchedule(task.train, (16, 16, 16), 2, seed=3)
    b = PatchSchedule(task.train, (16, 16, 16), 2, seed=3)
    c = PatchSchedule(task.train, (16, 16, 16), 2, seed=4)
    xa, xb, xc = (s.next_batch()[0] for s in (a, b, c))
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


def test_patch_larger_than_volume_is_padded() -> None:
    task = blob_task(shape=(12, 12, 12))
    x, y = PatchSchedule(task.train, (16, 16, 16), 2, seed=0).next_batch()
    assert x.shape == (2, 1, 16, 16, 16) and y.shape == (2, 1, 16, 16, 16)
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    result = train(model, model.parameters(), task, small_config(max_steps=2, val_every=2))
    assert result.steps == 2 and len(result.curve) == 1


def test_nan_loss_fails_with_the_step() -> None:
    task = blob_task()
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    task.train[0].image[:] = np.nan
    task.train[1].image[:] = np.nan
    task.train[2].image[:] = np.nan
    with pytest.raises(TrainingError, match="at step 1"):
        train(model, model.parameters(), task, small_config())


def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulated bf16 (plain AVX512) ran twice as slow as fp32: `auto` must not pick it on such a CPU."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert not precision.use_bf16(TrainConfig(precision="auto", device="cpu"))
    assert precision.use_bf16(TrainConfig(precision="bf16", device="cpu"))  # asked for explicitly
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.use_bf16(TrainConfig(precision="auto", device="cpu")) == torch.backends.mkldnn.is_available()
    assert not precision.use_bf16(TrainConfig(precision="fp32", device="cpu"))
