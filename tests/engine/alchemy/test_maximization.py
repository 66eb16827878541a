"""Maximization (alchemy/maximization.py): R_γ and fine-tuning with L + λ·R_γ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnrank.engine.alchemy import AlchemyConfig, fine_tune, maximize, r_gamma
from bnrank.engine.architectures import get_architecture
from bnrank.engine.bn_only import bn_only_parameters
from tests.engine.tiny import blob_task, narrow_model, small_config


def test_r_gamma_gradient_raises_the_mean_and_shrinks_the_spread() -> None:
    model = nn.Sequential(nn.Conv3d(1, 3, 1), nn.BatchNorm3d(3), nn.Conv3d(3, 3, 1), nn.BatchNorm3d(3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, 0.5, 1.0]))
        model[3].weight.copy_(torch.tensor([1.5, 0.2, 0.8]))
    r = r_gamma(model, alpha=0.1, beta=1.0)
    r.backward()
    g = torch.cat([model[1].weight.detach(), model[3].weight.detach()])
    grad = torch.cat([model[1].weight.grad, model[3].weight.grad])
    expected = -0.1 / 6 + (g - g.mean()) / (6 * g.std(unbiased=False))
    assert torch.allclose(grad, expected, atol=1e-5)
    assert grad.sum().item() == pytest.approx(-0.1, abs=1e-5)  # along (1, ..., 1): pushes the mean up
    assert torch.all(torch.sign(grad + 0.1 / 6) == torch.sign(g - g.mean()))  # spread term: towards mean
    with torch.no_grad():  # one gradient-descent step on R_γ alone
        for bn in (model[1], model[3]):
            bn.weight -= 0.5 * bn.weight.grad
    g2 = torch.cat([model[1].weight.detach(), model[3].weight.detach()])
    assert g2.mean() > g.mean() and g2.std() < g.std()
    # a fresh network has every γ = 1: the gradient must stay finite there (std = 0)
    fresh = nn.Sequential(nn.Conv3d(1, 3, 1), nn.BatchNorm3d(3))
    r_gamma(fresh).backward()
    assert torch.isfinite(fresh[1].weight.grad).all()


def test_maximize_is_fine_tuning_of_every_parameter_plus_lambda_r_gamma() -> None:
    task, config = blob_task(), small_config(max_steps=3, val_every=3)

    def tuned(step, **options):
        model = narrow_model("unet3d")
        bn_only_parameters(model, get_architecture("unet3d"))  # freeze all but BN and head, as identification does
        kernel = model.down_tr64.ops[0].conv1.weight.detach().clone()
        result = step(model, task, config, AlchemyConfig(mode="finetune", **options))
        assert all(p.requires_grad for p in model.parameters())
        assert not torch.equal(kernel, model.down_tr64.ops[0].conv1.weight)  # kernels train too
        return result

    plain = tuned(fine_tune)
    assert set(plain.r_gamma) == {"before", "after"}  # recorded without the regulariser too
    # λ = 0: the same run as plain fine-tuning; λ > 0 on the same seed ends with a lower R_γ
    assert tuned(maximize, lam=0.0).r_gamma == pytest.approx(plain.r_gamma)
    regularised = tuned(maximize, lam=1.0)
    assert regularised.r_gamma["before"] == pytest.approx(plain.r_gamma["before"])
    assert regularised.r_gamma["after"] < plain.r_gamma["after"] - 1e-3
    assert regularised.training.steps == plain.training.steps == 3


def test_fine_tuning_a_network_without_batchnorm_records_no_r_gamma() -> None:
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    result = fine_tune(model, blob_task(), small_config(max_steps=2, val_every=2), AlchemyConfig(mode="finetune"))
    assert result.r_gamma == {} and result.training.steps == 2
