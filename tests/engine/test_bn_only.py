"""BN-only evaluation (engine/bn_only.py): what trains, the shared head, determinism."""

from __future__ import annotations

import pytest
import torch

from bnrank.engine.architectures import build_model, get_architecture
from bnrank.engine.bn_only import bn_only_evaluate, bn_only_parameters, reinit_head
from tests.engine.tiny import WIDTH, blob_task, small_config


def test_bn_only_changes_only_bn_and_head() -> None:
    task = blob_task()
    arch = get_architecture("unet3d")
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, g_before, g_after = bn_only_evaluate(model, arch, task, small_config())
    bn_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm3d)}
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        changed = not torch.equal(p.detach(), before[name])
        if owner in bn_names or name.startswith("out_tr."):
            assert changed, f"{name} should have trained"
        else:
            assert not changed, f"{name} is frozen but changed"
    assert g_before["summary"]["mean"] == pytest.approx(1.0)  # fresh BN γ
    assert g_after["summary"]["mean"] != pytest.approx(1.0)
    assert result.steps == 6 and [p["step"] for p in result.curve] == [3, 6]
    assert 0.0 <= result.score <= 1.0
    assert set(result.dice_per_class) == {"sphere", "cube"}


def test_bn_only_trainable_set_excludes_convs() -> None:
    arch = get_architecture("unet3d")
    model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    params = bn_only_parameters(model, arch)
    n_bn = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))
    n_head = sum(p.numel() for p in model.out_tr.parameters())
    assert sum(p.numel() for p in params) == n_bn + n_head
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.endswith("conv1.weight"))


def test_every_candidate_gets_the_same_head() -> None:
    arch = get_architecture("unet3d")
    torch.manual_seed(1)
    a = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    torch.manual_seed(2)
    b = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
    reinit_head(a, arch, seed=7)
    reinit_head(b, arch, seed=7)
    assert torch.equal(a.out_tr.final_conv.weight, b.out_tr.final_conv.weight)
    assert not torch.equal(a.down_tr64.ops[0].conv1.weight, b.down_tr64.ops[0].conv1.weight)


def test_same_inputs_same_result() -> None:
    """Fair ranking needs determinism: the same candidate twice gives the same curve."""
    task = blob_task()
    arch = get_architecture("unet3d")
    curves = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("unet3d", in_channels=1, out_channels=3, width=WIDTH)
        curves.append(bn_only_evaluate(model, arch, task, small_config())[0].curve)
    assert [p["dice"] for p in curves[0]] == pytest.approx([p["dice"] for p in curves[1]], abs=1e-6)
