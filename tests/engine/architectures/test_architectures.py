"""Architecture registry: exact checkpoint layouts, forward shapes, infer round-trips, network_def safety."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from bnrank.engine.architectures import (
    ARCHITECTURES,
    Architecture,
    architecture_from_network_def,
    build_model,
    get_architecture,
    head_keys,
    probe_head,
)
from bnrank.engine.architectures.registry import state_shapes
from bnrank.engine.errors import BNRankError, NetworkDefError, UnknownArchitectureError

# Narrow settings per architecture so every test builds and runs in well under a second.
NARROW: dict[str, dict[str, Any]] = {
    "unet3d": {"width": 4},
    "medicalnet_resnet10": {"width": 8},
    "medicalnet_resnet18": {"width": 8},
    "medicalnet_resnet34": {"width": 8},
    "medicalnet_resnet50": {"width": 8},
    "monai_unet": {},
    "monai_basicunet": {},
    # built from an nnU-Net plans' architecture entry (tests/engine/formats/makers.py writes real plans)
    "nnunet": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3,
            "features_per_stage": [4, 8, 16],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1],
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"affine": True},
            "nonlin": "torch.nn.LeakyReLU",
        },
    },
}
UNET_DEF = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 4,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "norm": "batch",
}


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return state_shapes(model)


def test_every_architecture_has_narrow_settings() -> None:
    assert set(NARROW) == set(ARCHITECTURES)
    assert all(name == arch.name for name, arch in ARCHITECTURES.items())


def test_unet3d_full_width_matches_models_genesis() -> None:
    model = build_model("unet3d", in_channels=1, out_channels=1)
    assert sum(p.numel() for p in model.parameters()) == 19_073_665
    shapes = shapes_of(model)
    assert shapes["down_tr64.ops.0.conv1.weight"] == (32, 1, 3, 3, 3)
    assert shapes["down_tr64.ops.1.conv1.weight"] == (64, 32, 3, 3, 3)
    assert shapes["down_tr512.ops.1.conv1.weight"] == (512, 256, 3, 3, 3)
    assert shapes["up_tr256.up_conv.weight"] == (512, 512, 2, 2, 2)
    assert shapes["up_tr256.ops.0.conv1.weight"] == (256, 768, 3, 3, 3)
    assert shapes["out_tr.final_conv.weight"] == (1, 64, 1, 1, 1)
    assert shapes["down_tr64.ops.0.bn1.num_batches_tracked"] == ()


def test_unet3d_prelu_adds_per_channel_weights() -> None:
    shapes = shapes_of(build_model("unet3d", width=4, act="prelu"))
    assert shapes["down_tr64.ops.0.activation.weight"] == (4,)
    assert get_architecture("unet3d").infer(shapes) == {
        "in_channels": 1,
        "width": 4,
        "act": "prelu",
        "out_channels": 2,
    }
    with pytest.raises(BNRankError, match="act"):
        build_model("unet3d", act="gelu")


def test_unet3d_eval_uses_running_statistics() -> None:
    model = build_model("unet3d", width=4).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    # With running statistics, a sample's output does not depend on what else is in the batch.
    torch.testing.assert_close(model(x)[:1], model(x[:1]))


@pytest.mark.parametrize("name", sorted(NARROW))
def test_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=2, out_channels=3, **NARROW[name]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, 16, 16, 16))
    assert out.shape == (1, 3, 16, 16, 16)
    assert torch.isfinite(out).all()


def test_medicalnet_output_is_upsampled_for_any_size() -> None:
    model = build_model("medicalnet_resnet10", width=8, out_channels=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 20, 24, 18))
    assert out.shape == (1, 2, 20, 24, 18)


def test_medicalnet_layout() -> None:
    shapes = shapes_of(build_model("medicalnet_resnet50", out_channels=2))
    assert shapes["conv1.weight"] == (64, 1, 7, 7, 7)
    assert shapes["layer1.0.conv3.weight"] == (256, 64, 1, 1, 1)
    assert shapes["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1, 1)
    assert shapes["conv_seg.0.weight"] == (2048, 32, 2, 2, 2)
    assert shapes["conv_seg.6.weight"] == (2, 32, 1, 1, 1)
    assert "layer4.2.conv3.weight" in shapes and "layer4.3.conv1.weight" not in shapes


def test_medicalnet_shortcut_a_has_no_downsample_tensors() -> None:
    a = shapes_of(build_model("medicalnet_resnet18", width=8, shortcut="A"))
    b = shapes_of(build_model("medicalnet_resnet18", width=8, shortcut="B"))
    assert not any("downsample" in key for key in a)
    assert "layer2.0.downsample.0.weight" in b
    assert set(a) < set(b)
    model = build_model("medicalnet_resnet18", width=8, shortcut="A").eval()
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


# nnunet is built from its plans, never recognised from shapes (tests/engine/formats covers it)
INFERRED = sorted(name for name in NARROW if name != "nnunet")


@pytest.mark.parametrize("name", INFERRED)
def test_infer_round_trip(name: str) -> None:
    arch = get_architecture(name)
    shapes = shapes_of(build_model(name, in_channels=2, out_channels=3, **NARROW[name]))
    kwargs = arch.infer(shapes)
    assert kwargs is not None
    assert kwargs["in_channels"] == 2 and kwargs["out_channels"] == 3
    assert shapes_of(arch.build(**kwargs)) == shapes


@pytest.mark.parametrize("name", INFERRED)
def test_infer_without_head(name: str) -> None:
    arch = get_architecture(name)
    model = build_model(name, in_channels=1, out_channels=3, **NARROW[name])
    head = set(head_keys(model, arch))
    shapes = {k: v for k, v in shapes_of(model).items() if k not in head}
    kwargs = arch.infer(shapes)
    assert kwargs is not None and "out_channels" not in kwargs
    rebuilt = {k: v for k, v in shapes_of(arch.build(**kwargs)).items() if k not in head}
    assert rebuilt == shapes


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_encoder_only_medicalnet_is_recognised(depth: int, shortcut: str) -> None:
    shapes = shapes_of(build_model(f"medicalnet_resnet{depth}", width=8, shortcut=shortcut))
    encoder = {k: v for k, v in shapes.items() if not k.startswith("conv_seg.")}
    matches = [name for name, arch in ARCHITECTURES.items() if arch.infer(encoder) is not None]
    assert matches == [f"medicalnet_resnet{depth}"]
    kwargs = ARCHITECTURES[matches[0]].infer(encoder)
    assert kwargs == {"in_channels": 1, "width": 8, "shortcut": shortcut}


def test_infer_tolerates_missing_num_batches_tracked() -> None:
    shapes = shapes_of(build_model("unet3d", width=4, out_channels=1))
    old = {k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    assert get_architecture("unet3d").infer(old) == {"in_channels": 1, "width": 4, "out_channels": 1}


def test_infer_rejects_altered_checkpoints() -> None:
    arch = get_architecture("unet3d")
    shapes = shapes_of(build_model("unet3d", width=4))
    assert arch.infer({**shapes, "extra.weight": (3,)}) == {"in_channels": 1, "width": 4, "out_channels": 2}
    assert arch.infer({**shapes, "up_tr64.ops.1.conv1.weight": (9, 8, 3, 3, 3)}) is None
    shapes.pop("up_tr128.ops.0.bn1.weight")
    assert arch.infer(shapes) is None


def test_infer_of_other_architectures_keys_is_none() -> None:
    for name, arch in ARCHITECTURES.items():
        for other in ARCHITECTURES:
            if other == name:
                continue
            shapes = shapes_of(build_model(other, **NARROW[other]))
            assert arch.infer(shapes) is None, f"{name} claimed {other}'s keys"


def test_head_keys() -> None:
    unet3d = get_architecture("unet3d")
    assert head_keys(build_model("unet3d", width=4), unet3d) == [
        "out_tr.final_conv.weight",
        "out_tr.final_conv.bias",
    ]
    arch = get_architecture("monai_unet")
    keys = head_keys(build_model("monai_unet", out_channels=2), arch)
    assert keys
    two, three = shapes_of(arch.build(out_channels=2)), shapes_of(arch.build(out_channels=3))
    assert all(two[k] != three[k] for k in keys if not k.endswith("num_batches_tracked"))
    assert {k for k in two if two[k] != three[k]} <= set(keys)


@pytest.mark.parametrize("name", sorted(NARROW))
def test_static_heads_cover_everything_that_depends_on_out_channels(name: str) -> None:
    arch = get_architecture(name)
    options = NARROW[name]
    probed = probe_head(lambda **kw: arch.build(**options, **kw))
    assert all(prefix.startswith(arch.head) for prefix in probed)


def test_unknown_architecture_and_option() -> None:
    with pytest.raises(UnknownArchitectureError, match="unet3d"):
        get_architecture("resnet")
    with pytest.raises(BNRankError, match="depht"):
        build_model("unet3d", depht=3)


def test_network_def_builds_allowed_class() -> None:
    arch = architecture_from_network_def(UNET_DEF)
    assert isinstance(arch, Architecture) and arch.name == "monai:UNet"
    model = arch.build().eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 4, 16, 16, 16)
    assert arch.head and head_keys(model, arch)
    overridden = arch.build(in_channels=2, out_channels=5)
    with torch.no_grad():
        assert overridden(torch.randn(1, 2, 16, 16, 16)).shape == (1, 5, 16, 16, 16)
    full_path = architecture_from_network_def({**UNET_DEF, "_target_": "monai.networks.nets.UNet"})
    assert full_path.name == "monai:UNet"
    shapes = shapes_of(overridden)
    assert arch.infer(shapes) == {"in_channels": 2, "out_channels": 5}


@pytest.mark.parametrize(
    ("defn", "message"),
    [
        ({"_target_": "os.system"}, "not allowed"),
        ({"_target_": "monai.bundle.ConfigParser"}, "not allowed"),
        ({"_target_": "monai.networks.nets.unet.UNet"}, "not allowed"),
        ({"_target_": "ResNet", "spatial_dims": 3}, "not allowed"),
        ({"_target_": "NoSuchNet"}, "not allowed"),
        ({"_target_": "$import os"}, "not allowed"),
        ({**UNET_DEF, "channels": "$import os"}, "expressions"),
        ({**UNET_DEF, "norm": "$__import__('os').system('true')"}, "expressions"),
        ({**UNET_DEF, "channels": "@network_def#channels"}, "references"),
        ({**UNET_DEF, "act": {"_target_": "torch.nn.ReLU"}}, "nested"),
        ({**UNET_DEF, "_requires_": "$import os"}, "not supported"),
        ({"spatial_dims": 3}, "_target_"),
        ({**UNET_DEF, "spatial_dims": 2}, "3D"),
        ("UNet", "mapping"),
    ],
)
def test_network_def_refusals(defn: Any, message: str) -> None:
    with pytest.raises(NetworkDefError, match=message):
        architecture_from_network_def(defn).build()


def test_network_def_unknown_kwarg_is_named() -> None:
    with pytest.raises(NetworkDefError, match="chanels"):
        architecture_from_network_def({**UNET_DEF, "chanels": [8, 16]})
    arch = architecture_from_network_def(UNET_DEF)
    with pytest.raises(NetworkDefError, match="widht"):
        arch.build(widht=3)


def test_network_def_missing_argument_is_explained() -> None:
    defn = {k: v for k, v in UNET_DEF.items() if k != "strides"}
    with pytest.raises(NetworkDefError, match="strides"):
        architecture_from_network_def(defn)


def test_network_def_without_normalisation() -> None:
    model = architecture_from_network_def({**UNET_DEF, "norm": "instance"}).build()  # norm-only needs no BN
    assert not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert any(isinstance(m, nn.InstanceNorm3d) for m in build_model("monai_unet", norm="instance").modules())
    arch = architecture_from_network_def({**UNET_DEF, "norm": None})
    with pytest.raises(NetworkDefError, match="no normalisation layers"):
        arch.build()
    model = arch.build(require_norm=False)
    assert not any("Norm" in type(m).__name__ for m in model.modules())


def test_medicalnet_with_classifier_is_recognised_but_monai_infer_is_strict() -> None:
    shapes = shapes_of(build_model("medicalnet_resnet10", width=8))
    encoder = {k: v for k, v in shapes.items() if not k.startswith("conv_seg.")}
    classifier = {**encoder, "fc.weight": (2, 64), "fc.bias": (2,)}
    assert get_architecture("medicalnet_resnet10").infer(classifier) == {
        "in_channels": 1,
        "width": 8,
        "shortcut": "B",
    }
    monai = shapes_of(build_model("monai_unet"))
    assert get_architecture("monai_unet").infer({**monai, "extra.weight": (3,)}) is None
