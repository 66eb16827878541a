"""Tracing which convolution feeds which BatchNorm (alchemy/pairs.py)."""

from __future__ import annotations

import pytest
import torch

from bnrank.engine.alchemy import find_conv_bn_pairs
from bnrank.engine.gamma import bn_layers
from tests.engine.tiny import NARROW, UnpairedBNs, narrow_model


@pytest.mark.parametrize("name", sorted(NARROW))
def test_every_bn_is_paired_with_the_conv_feeding_it(name: str) -> None:
    model = narrow_model(name)
    rng = torch.get_rng_state()
    pairs, skipped = find_conv_bn_pairs(model, (1, 1, 16, 16, 16))
    assert torch.equal(rng, torch.get_rng_state())  # tracing leaves the global RNG alone
    assert skipped == []
    assert [p.bn for p in pairs] == [n for n, _ in bn_layers(model)]
    modules = dict(model.named_modules())
    for p in pairs:
        assert modules[p.conv].out_channels == modules[p.bn].num_features
        assert p.conv.rpartition(".")[0] == p.bn.rpartition(".")[0].removesuffix(".adn")  # siblings
    by_bn = {p.bn: p for p in pairs}
    if name == "unet3d":
        assert by_bn["down_tr64.ops.0.bn1"].conv == "down_tr64.ops.0.conv1"
        assert by_bn["up_tr64.ops.1.bn1"].conv == "up_tr64.ops.1.conv1"
    if name == "medicalnet_resnet10":
        assert by_bn["layer2.0.downsample.1"].conv == "layer2.0.downsample.0"
        assert by_bn["conv_seg.1"].conv_type == "ConvTranspose3d" and by_bn["conv_seg.1"].conv == "conv_seg.0"
    if name == "monai_unet":
        assert any(p.conv_type == "ConvTranspose3d" for p in pairs)
    # the trace leaves running statistics alone
    fresh = narrow_model(name)
    for (_, a), (_, b) in zip(bn_layers(model), bn_layers(fresh), strict=True):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)


def test_bns_without_a_direct_conv_are_skipped_with_a_reason() -> None:
    pairs, skipped = find_conv_bn_pairs(UnpairedBNs(), (1, 1, 8, 8, 8))
    assert [(p.bn, p.conv) for p in pairs] == [("bn_a", "conv_a")]
    reasons = {s.bn: s.reason for s in skipped}
    assert set(reasons) == {"bn_in", "bn_b", "bn_cat"}
    assert all("conv" in r for r in reasons.values())
