"""Cheap validation, a continuous score and BatchNorm statistics re-estimated before a scored validation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bnrank.engine.architectures import get_architecture
from bnrank.engine.bn_only import bn_only_parameters, reinit_head
from bnrank.engine.training.trainer import recalibrate_batchnorm, recalibration_batches, train
from bnrank.engine.training.validation import Validator
from tests.engine.tiny import blob_task, narrow_model, small_config


def validated_steps(curve: list[dict]) -> list[int]:
    return [p["step"] for p in curve if "dice" in p]


def test_scored_validation_runs_only_where_the_score_is_taken() -> None:
    task = blob_task()
    config = small_config(max_steps=12, val_every=2, score_window=2, validate_at="scored", validation="patches")
    model = narrow_model("unet3d")
    result = train(model, model.parameters(), task, config)
    assert validated_steps(result.curve) == [10, 12]
    # the training loss is still reported on the usual cadence, without a validation
    assert [p["step"] for p in result.curve if "dice" not in p] == [2, 4, 6, 8]
    assert all(np.isfinite(p["loss_mean"]) for p in result.curve)
    assert result.score == pytest.approx(np.mean([p["score"] for p in result.curve if "score" in p]))
    assert len(result.case_scores) == 2 and len(result.case_scores[0]) == config.val_patches
    every = train(
        narrow_model("unet3d"), narrow_model("unet3d").parameters(), task, small_config(max_steps=12, val_every=2)
    )
    assert validated_steps(every.curve) == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize("mode", ["whole", "patches"])
def test_cheap_validation_modes_use_fixed_units(mode: str) -> None:
    task = blob_task(shape=(20, 20, 20))  # not a multiple of the network's downsampling: whole pads, then crops
    config = small_config(validation=mode, val_patches=5)
    a, b = Validator(task, config), Validator(task, config)
    assert len(a.units) == (len(task.val) if mode == "whole" else 5)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a.units, b.units, strict=True))
    val = a(narrow_model("unet3d"))
    assert val.unit_scores.shape == (len(a.units),)
    assert 0.0 <= val.dice <= 1.0 and val.dice_per_class.shape == (2,)


def test_whole_volume_validation_agrees_with_the_sliding_window_when_one_window_covers_the_case() -> None:
    task = blob_task(shape=(16, 16, 16))
    model = narrow_model("unet3d")
    sliding = Validator(task, small_config(validation="sliding_window"))(model)
    whole = Validator(task, small_config(validation="whole"))(model)
    np.testing.assert_allclose(whole.dice_per_class, sliding.dice_per_class, atol=1e-6)


def stuck_at_background(foreground_bias: float) -> torch.nn.Module:
    """A model whose every voxel is predicted background, with a fixed foreground probability."""
    model = narrow_model("unet3d")
    with torch.no_grad():
        model.out_tr.final_conv.weight.zero_()
        model.out_tr.final_conv.bias.copy_(torch.tensor([10.0, foreground_bias, foreground_bias]))
    return model


@pytest.mark.parametrize("score", ["soft_dice", "dice_ce"])
def test_a_continuous_score_orders_candidates_stuck_at_dice_zero(score: str) -> None:
    task = blob_task()
    closer, further = stuck_at_background(8.0), stuck_at_background(2.0)
    hard = Validator(task, small_config(validation="whole"))
    assert hard(closer).score == hard(further).score == 0.0
    soft = Validator(task, small_config(validation="whole", score=score))
    a, b = soft(closer), soft(further)
    assert a.dice == b.dice == 0.0  # hard Dice is still reported beside the score
    if score == "soft_dice":
        assert a.score > b.score  # more foreground probability where the foreground is
    else:
        assert a.score != pytest.approx(b.score, abs=1e-4)  # DiceCE weighs background voxels too


def test_training_reports_hard_dice_beside_a_soft_score() -> None:
    task = blob_task()
    model = narrow_model("unet3d")
    result = train(model, model.parameters(), task, small_config(score="soft_dice", validation="whole"))
    points = [p for p in result.curve if "score" in p]
    assert all(p["score"] != p["dice"] for p in points)
    assert result.dice == pytest.approx(np.mean([p["dice"] for p in points][-3:]))
    assert result.score == pytest.approx(np.mean([p["score"] for p in points][-3:]))


def source_statistics_leak(bn_recalibration: int) -> tuple[float, float]:
    """Scores of two copies of a candidate that differ only in the BatchNorm statistics they came with."""
    task = blob_task()
    arch = get_architecture("unet3d")
    clean = narrow_model("unet3d")
    skewed = copy.deepcopy(clean)
    for m in skewed.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean += 3.0
            m.running_var *= 20.0
    config = small_config(
        max_steps=3, val_every=3, validation="whole", score="soft_dice", bn_recalibration=bn_recalibration
    )
    scores = []
    for model in (clean, skewed):
        reinit_head(model, arch, config.seed)
        result = train(model, bn_only_parameters(model, arch), task, config)
        scores.append(result.score)
    return scores[0], scores[1]


def test_recalibrated_batchnorm_statistics_keep_the_source_statistics_out_of_the_score() -> None:
    clean, skewed = source_statistics_leak(bn_recalibration=0)
    assert clean != pytest.approx(skewed, abs=1e-6)  # three steps at momentum 0.1 keep 73 % of the source
    clean, skewed = source_statistics_leak(bn_recalibration=2)
    assert clean == pytest.approx(skewed, abs=1e-6)


def test_recalibration_restores_momentum_and_rng_and_is_a_plain_average() -> None:
    task = blob_task()
    config = small_config(bn_recalibration=3)
    batches = recalibration_batches(task, config)
    assert len(batches) == 3 and all(
        torch.equal(x, y) for x, y in zip(batches, recalibration_batches(task, config), strict=True)
    )
    model = narrow_model("unet3d").eval()
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    recalibrate_batchnorm(model, batches, config)
    assert torch.equal(torch.rand(1), expected)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert first.momentum == 0.1 and not model.training and int(first.num_batches_tracked) == 3
    # the first BN sees conv outputs of the raw patches: its mean is the average of the batch means
    conv = model.down_tr64.ops[0].conv1
    with torch.no_grad():
        means = torch.stack([conv(x).mean(dim=(0, 2, 3, 4)) for x in batches]).mean(0)
    torch.testing.assert_close(first.running_mean, means, atol=1e-5, rtol=1e-4)
