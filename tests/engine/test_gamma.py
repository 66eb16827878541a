"""Statistics of BatchNorm γ (engine/gamma.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnrank.engine.architectures import build_model
from bnrank.engine.gamma import HIST_EDGES, bn_layers, gamma_stats, gamma_vector, has_batchnorm, histogram
from tests.engine.tiny import WIDTH


def test_gamma_stats_counts_and_fixed_bins() -> None:
    model = build_model("unet3d", in_channels=1, out_channels=2, width=WIDTH)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    with torch.no_grad():
        bns[0].weight.fill_(0.01)  # a whole layer switched off
    stats = gamma_stats(model)
    total = sum(m.num_features for m in bns)
    assert stats["n_layers"] == len(bns)
    assert stats["summary"]["count"] == total
    assert stats["summary"]["n_below"] == bns[0].num_features
    assert stats["summary"]["share_below"] == pytest.approx(bns[0].num_features / total)
    assert sum(stats["histogram"]["counts"]) == total
    assert len(stats["histogram"]["counts"]) == len(HIST_EDGES) - 1
    assert stats["histogram"]["counts"][0] == bns[0].num_features  # 0.01 falls in [0, 0.05)
    assert stats["layers"][0]["share_below"] == 1.0
    assert stats["layers"][1]["share_below"] == 0.0


def test_only_affine_norms_count_and_the_gamma_vector_keeps_its_graph() -> None:
    model = nn.Sequential(
        nn.Conv3d(1, 3, 1), nn.BatchNorm3d(3), nn.BatchNorm3d(3, affine=False), nn.InstanceNorm3d(3, affine=True)
    )
    assert [name for name, _ in bn_layers(model)] == ["1"]  # no γ, or not a BatchNorm: nothing to measure
    assert has_batchnorm(model) and not has_batchnorm(nn.Sequential(nn.Conv3d(1, 3, 1)))
    g = gamma_vector(model)  # every normalisation with γ: the affine BatchNorm and the affine InstanceNorm
    assert g.shape == (6,) and g.requires_grad
    assert gamma_stats(model)["summary"]["kinds"] == ["batch", "instance"]
    empty = gamma_stats(nn.Sequential(nn.Conv3d(1, 3, 1)))
    assert empty["n_layers"] == 0 and empty["summary"] == {"count": 0, "kinds": []}


def test_histogram_bins_are_fixed_and_the_last_takes_everything_from_two_up() -> None:
    counts = histogram(torch.tensor([0.0, 0.049, 0.05, -0.07, 1.99, 2.0, 7.5]))
    assert len(counts) == len(HIST_EDGES) - 1 and sum(counts) == 7
    assert counts[0] == 2 and counts[1] == 2  # |γ|: [0, 0.05) holds 0 and 0.049; [0.05, 0.1) 0.05 and |-0.07|
    assert counts[39] == 1 and counts[40] == 2  # 1.99 in [1.95, 2.0); 2.0 and 7.5 in the overflow bin
