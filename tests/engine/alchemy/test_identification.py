"""Identification (alchemy/identification.py): BN-only training, then the smallest γ marked redundant."""

from __future__ import annotations

import pytest
import torch

from bnrank.engine.alchemy import AlchemyConfig, AlchemyError, identification, identify, select_redundant
from bnrank.engine.architectures import get_architecture
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.gamma import bn_layers, gamma_stats
from tests.engine.tiny import blob_task, narrow_model, small_config, weaken_channels


def test_selection_by_fraction_takes_the_smallest_gammas() -> None:
    model = narrow_model("unet3d")
    with torch.no_grad():
        for _, bn in bn_layers(model):
            bn.weight.uniform_(0.5, 1.5)
    weaken_channels(model, "down_tr64.ops.1.bn1", [1, 3], value=0.2)
    total = sum(bn.num_features for _, bn in bn_layers(model))
    selection, _ = select_redundant(model, fraction=2 / total)
    assert selection.channels == {"down_tr64.ops.1.bn1": [1, 3]} and selection.rule == "fraction"
    with pytest.raises(AlchemyError, match="not both"):
        select_redundant(model, threshold=0.1, fraction=0.1)
    with pytest.raises(AlchemyError, match="fraction"):
        select_redundant(model, fraction=0.0)


def test_a_threshold_that_marks_nothing_says_so() -> None:
    selection, warnings = select_redundant(narrow_model("unet3d"))  # fresh: every γ = 1
    assert selection.rule == "threshold" and selection.threshold == 0.05 and selection.marked == 0
    assert selection.channels == {} and selection.min_abs_gamma == 1.0
    assert len(warnings) == 1 and "no kernel is marked" in warnings[0] and "--fraction" in warnings[0]


def test_a_threshold_that_marks_every_kernel_is_capped_with_a_warning() -> None:
    model = narrow_model("unet3d")
    selection, warnings = select_redundant(model, threshold=100.0)
    total = selection.total
    assert selection.marked == total and selection.capped
    assert selection.kept_after_cap == total // 2
    assert sum(len(v) for v in selection.channels.values()) == total // 2
    assert len(warnings) == 1 and "max share 50%" in warnings[0]


def test_identify_trains_only_bn_with_its_own_budget_then_marks_from_the_trained_gammas(monkeypatch) -> None:
    task = blob_task()
    model = narrow_model("unet3d")
    kernels = {n: p.clone() for n, p in model.named_parameters() if n.endswith("conv1.weight")}
    budgets: list[TrainConfig] = []
    real = identification.bn_only_evaluate

    def spy(model, arch, data, config, **kw):
        budgets.append(config)
        return real(model, arch, data, config, **kw)

    monkeypatch.setattr(identification, "bn_only_evaluate", spy)
    finetune = small_config(max_steps=5, val_every=3, lr=3e-3)
    options = AlchemyConfig(identify_steps=3, identify_lr=2e-2, fraction=0.1)
    found = identify(model, get_architecture("unet3d"), task, finetune, options)

    # BN-only training, on identification's budget (its steps and rate, the fine-tuning schedule otherwise)
    assert [(b.max_steps, b.lr, b.val_every, b.patch_size) for b in budgets] == [(3, 2e-2, 3, (16, 16, 16))]
    assert found.training.steps == 3
    assert all(torch.equal(p, kernels[n]) for n, p in model.named_parameters() if n in kernels)
    # the γ statistics after training, plus how far BN-only training moved them (bn_only adds `change`)
    after = dict(found.gamma["summary"])
    assert after.pop("change")["count"] == after["count"]
    assert after == gamma_stats(model)["summary"]
    assert found.gamma["summary"]["mean"] != pytest.approx(1.0)
    # the selection is read off the γ that training left (a fresh network has every γ = 1)
    expected, warnings = select_redundant(model, fraction=0.1)
    assert found.selection == expected and found.warnings == warnings
    assert found.selection.kept_after_cap == int(0.1 * found.selection.total) > 0
    assert select_redundant(narrow_model("unet3d"), fraction=0.1)[0].channels != found.selection.channels
