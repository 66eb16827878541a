"""Modification (alchemy/modification.py): exactly the marked kernels re-drawn, their BN channels reset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnrank.engine.alchemy import Selection, find_conv_bn_pairs, modify, select_redundant
from bnrank.engine.alchemy.modification import skipped_warnings
from bnrank.engine.gamma import bn_layers
from tests.engine.tiny import UnpairedBNs, narrow_model, weaken_channels


@pytest.mark.parametrize(
    ("name", "bn_name", "conv_name", "transposed"),
    [
        ("unet3d", "down_tr128.ops.0.bn1", "down_tr128.ops.0.conv1", False),
        ("medicalnet_resnet10", "conv_seg.1", "conv_seg.0", True),
        ("monai_unet", "model.1.submodule.2.0.adn.N", "model.1.submodule.2.0.conv", True),
    ],
)
def test_only_the_marked_filters_and_bn_channels_change(name, bn_name, conv_name, transposed) -> None:
    model = narrow_model(name)
    with torch.no_grad():  # every γ comfortably above the threshold, except the marked ones
        for _, bn in bn_layers(model):
            bn.weight.uniform_(0.5, 1.5)
    marked = [0, 2]
    weaken_channels(model, bn_name, marked)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    selection, warnings = select_redundant(model, threshold=0.05)
    assert warnings == [] and selection.channels == {bn_name: marked}
    pairs, skipped = find_conv_bn_pairs(model, (1, 1, 16, 16, 16))
    report = modify(model, selection, pairs, skipped, seed=0)
    assert report["reinitialised"] == 2
    layer = next(r for r in report["layers"] if r["bn"] == bn_name)
    assert layer["conv"] == conv_name and layer["reinitialised"] == 2 and layer["indices"] == marked
    assert sum(r["reinitialised"] for r in report["layers"]) == 2

    after = model.state_dict()
    w0, w1 = before[f"{conv_name}.weight"], after[f"{conv_name}.weight"]
    dim = 1 if transposed else 0
    keep = [c for c in range(w0.shape[dim]) if c not in marked]
    for c in marked:
        assert not torch.equal(w0.select(dim, c), w1.select(dim, c)), f"filter {c} was not re-initialised"
    assert torch.equal(w0.index_select(dim, torch.tensor(keep)), w1.index_select(dim, torch.tensor(keep)))
    fan_in = nn.init._calculate_fan_in_and_fan_out(w1)[0]
    new = torch.stack([w1.select(dim, c) for c in marked])
    assert new.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.35)  # Kaiming scale
    if f"{conv_name}.bias" in after:
        assert torch.all(after[f"{conv_name}.bias"][marked] == 0)
        assert torch.equal(after[f"{conv_name}.bias"][keep], before[f"{conv_name}.bias"][keep])
    for key, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        full = f"{bn_name}.{key}"
        assert torch.all(after[full][marked] == value), full
        assert torch.equal(after[full][keep], before[full][keep]), full
    touched = {f"{conv_name}.weight", f"{conv_name}.bias"} | {f"{bn_name}.{k}" for k in ("weight", "bias")}
    touched |= {f"{bn_name}.running_mean", f"{bn_name}.running_var"}
    for key in before:
        if key not in touched:
            assert torch.equal(before[key], after[key]), f"{key} changed"


def test_marks_in_a_bn_no_conv_feeds_are_left_alone_and_reported() -> None:
    model = UnpairedBNs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    selection = Selection("threshold", 0.05, None, 17, 3, 3, False, 0.0, channels={"bn_a": [1], "bn_b": [0, 2]})
    pairs, skipped = find_conv_bn_pairs(model, (1, 1, 8, 8, 8))
    report = modify(model, selection, pairs, skipped, seed=0)
    assert report["reinitialised"] == 1 and report["marked_but_skipped"] == 2
    assert {s["bn"]: s["marked"] for s in report["skipped"]} == {"bn_in": 0, "bn_b": 2, "bn_cat": 0}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("bn_b.", "conv_b.")))
    assert not torch.equal(before["conv_a.weight"][1], after["conv_a.weight"][1])
    (warning,) = skipped_warnings(report)
    assert warning.startswith("2 marked channel(s)") and "no directly feeding convolution" in warning
    assert skipped_warnings({"marked_but_skipped": 0}) == []


def test_the_fresh_kernels_are_drawn_from_the_seed() -> None:
    selection = Selection("fraction", None, 0.1, 17, 2, 2, False, 0.0, channels={"bn_a": [0, 3]})

    def redrawn(seed: int) -> torch.Tensor:
        torch.manual_seed(1)
        model = UnpairedBNs()
        pairs, skipped = find_conv_bn_pairs(model, (1, 1, 8, 8, 8))
        rng = torch.get_rng_state()
        modify(model, selection, pairs, skipped, seed=seed)
        assert torch.equal(rng, torch.get_rng_state())  # the draws leave the global RNG alone
        return model.conv_a.weight.detach().clone()

    assert torch.equal(redrawn(0), redrawn(0)) and not torch.equal(redrawn(0), redrawn(1))
