"""Refusals that say what a file is: a state dict of a known family without what rebuilds it says so and what to
upload instead; "closest" names only architectures that share a meaningful part of the key names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnrank.engine.architectures import architecture_from_network_def, build_model
from bnrank.engine.errors import UnknownArchitectureError
from bnrank.engine.fitting import load_checkpoint
from tests.engine.formats import makers as mk


def _refusal(tmp_path: Path, state: dict[str, torch.Tensor]) -> str:
    path = tmp_path / "w.pt"
    torch.save(state, str(path))
    with pytest.raises(UnknownArchitectureError) as caught:
        load_checkpoint(path)
    return str(caught.value)


def test_nnunet_weights_without_plans_say_upload_the_model_folder(tmp_path: Path) -> None:
    message = _refusal(tmp_path, mk.nnunet_network().state_dict())
    assert "nnU-Net PlainConvUNet" in message and "plans.json" in message
    assert "closest registered" not in message or "%" in message


def test_a_torchscript_trace_of_plainconvunet_is_named_as_nnunet(tmp_path: Path) -> None:
    model = mk.nnunet_network().eval()
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 16, 16, 16)), str(path))
    with pytest.raises(UnknownArchitectureError, match=r"nnU-Net PlainConvUNet.*checkpoint_final\.pth"):
        load_checkpoint(path)


def test_a_monai_network_without_its_bundle_says_upload_the_bundle(tmp_path: Path) -> None:
    net = architecture_from_network_def({**mk.SEGRESNET_DEF, "spatial_dims": 3}).build()
    message = _refusal(tmp_path, net.state_dict())
    assert "MONAI SegResNet" in message and "bundle" in message and "network_def" in message


def test_models_genesis_with_another_channel_plan_is_named(tmp_path: Path) -> None:
    state = build_model("unet3d", width=4).state_dict()
    state["down_tr64.ops.1.conv1.weight"] = torch.zeros(6, 4, 3, 3, 3)  # not 2·width
    message = _refusal(tmp_path, state)
    assert "Models Genesis UNet3D" in message and "ONNX" in message


def test_closest_is_left_out_when_nothing_is_shared(tmp_path: Path) -> None:
    message = _refusal(tmp_path, {"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)})
    assert "closest" not in message and "0%" in message and "export it to ONNX" in message
