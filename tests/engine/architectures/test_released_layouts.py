"""The published key layouts load as they are.

Models Genesis and MedicalNet released their weights from DataParallel models: keys carry `module.` and
sit in a dict under `state_dict`. These tests build such files from the architectures' own state dicts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnrank.engine.architectures import build_model
from bnrank.engine.fitting import load_checkpoint


def _release(model: torch.nn.Module, drop_prefix: str | None = None) -> dict:
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not (drop_prefix and k.startswith(drop_prefix))}
    return {"state_dict": state, "epoch": 200}


def test_models_genesis_release_layout(tmp_path: Path) -> None:
    """Models Genesis' Genesis_Chest_CT.pt: full-width UNet3D, one output channel, `module.` keys."""
    torch.manual_seed(0)
    source = build_model("unet3d", in_channels=1, out_channels=1)
    path = tmp_path / "Genesis_Chest_CT.pt"
    torch.save(_release(source), path)
    model, report = load_checkpoint(path, out_channels=4)
    assert report.architecture == "unet3d"
    assert report.stripped_prefixes == ["module."] and report.container == "state_dict"
    assert report.build_kwargs.get("width", 32) == 32
    assert sum(p.numel() for p in source.parameters()) == 19_073_665
    assert sorted(report.head_reinitialised) == ["out_tr.final_conv.bias", "out_tr.final_conv.weight"]
    assert report.matched_fraction == pytest.approx(1.0)
    assert torch.equal(
        model.state_dict()["up_tr64.ops.1.conv1.weight"], source.state_dict()["up_tr64.ops.1.conv1.weight"]
    )


@pytest.mark.parametrize(
    ("name", "shortcut"),
    [
        ("medicalnet_resnet10", "B"),
        ("medicalnet_resnet18", "A"),
        ("medicalnet_resnet34", "A"),
        ("medicalnet_resnet50", "B"),
    ],
)
def test_medicalnet_encoder_only_release(tmp_path: Path, name: str, shortcut: str) -> None:
    """MedicalNet's resnet_*.pth hold the encoder only (no `conv_seg`); 18/34 use parameter-free shortcuts."""
    torch.manual_seed(0)
    source = build_model(name, in_channels=1, out_channels=2, shortcut=shortcut, width=8)
    path = tmp_path / f"{name}.pth"
    torch.save(_release(source, drop_prefix="conv_seg."), path)
    model, report = load_checkpoint(path, out_channels=3)
    assert report.architecture == name
    assert report.build_kwargs["shortcut"] == shortcut
    assert all(k.startswith("conv_seg.") for k in report.missing)
    assert report.matched_fraction == pytest.approx(1.0)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"])
    out = model.eval()(torch.zeros(1, 1, 16, 16, 16))
    assert out.shape == (1, 3, 16, 16, 16)
