"""ONNX files for the tests: real exports of BNRank's networks, and graphs built by hand to be hostile."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bnrank.engine.architectures import build_model

from . import makers as mk

SMALL = {"unet3d": {"width": 4}, "medicalnet_resnet10": {"width": 8}, "monai_unet": {}, "monai_basicunet": {}}


def network(name: str, seed: int = 0) -> nn.Module:
    """A registered architecture at a small width, or (``nnunet``) a PlainConvUNet as nnU-Net builds it."""
    torch.manual_seed(seed)
    if name == "nnunet":
        return mk.nnunet_network(n_classes=2, seed=seed)
    return build_model(name, in_channels=1, out_channels=2, **SMALL.get(name, {}))


def export(model: nn.Module, path: Path, *, keep_norms: bool = True, size: int = 16) -> Path:
    """``torch.onnx.export`` with dynamic spatial axes; ``keep_norms`` exports in training mode, which keeps the
    BatchNorm nodes (eval mode, the exporter's default, folds them into the convolutions)."""
    in_channels = next(p for p in model.parameters() if p.dim() == 5).shape[1]
    mode = torch.onnx.TrainingMode.TRAINING if keep_norms else torch.onnx.TrainingMode.EVAL
    was = model.training
    model.train(keep_norms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(2, in_channels, size, size, size),), str(path), dynamo=False, opset_version=17,
            training=mode, input_names=["image"], dynamic_axes={"image": {0: "n", 2: "d", 3: "h", 4: "w"}},
        )
    model.train(was)
    return path


def _model(nodes: list, initializers: list, opset: int = 17, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)


def _conv_weight(name: str = "w") -> TensorProto:
    return numpy_helper.from_array(np.ones((2, 1, 3, 3, 3), np.float32), name)


def unknown_operator(path: Path) -> Path:
    """A conv followed by an operator outside the allow-list (``Einsum``)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 6),
        helper.make_node("Einsum", ["c"], ["y"], equation="ncdhw->ncdhw"),
    ]
    onnx.save(_model(nodes, [_conv_weight()]), str(path))
    return path


def external_data(path: Path, target: str) -> Path:
    """An initializer whose bytes the file says live at ``target`` (a path outside the file)."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 1, 3, 3, 3])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", target), ("offset", "0"), ("length", "216")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6)]
    with path.open("wb") as f:
        f.write(_model(nodes, [weight]).SerializeToString())
    return path


def huge_initializer(path: Path) -> Path:
    """An initializer declaring 10¹² elements over four stored bytes."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**6, 10**6, 1, 1, 1], raw_data=b"\0" * 4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    with path.open("wb") as f:  # onnx.save would run the checker, which is what is tested
        f.write(_model(nodes, [weight]).SerializeToString())
    return path


def custom_domain(path: Path) -> Path:
    """A node of a custom operator domain (what a runtime extension would execute)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 6),
        helper.make_node("Run", ["c"], ["y"], domain="com.example.shell"),
    ]
    model = _model(nodes, [_conv_weight()])
    model.opset_import.append(helper.make_opsetid("com.example.shell", 1))
    with path.open("wb") as f:
        f.write(model.SerializeToString())
    return path


# ------------------------------------------------------------------------------------------- TorchScript


class _Unregistered(nn.Module):
    """A network no registered architecture has (a LinkNet-like encoder with InstanceNorm without affine)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm3d(4)
        self.down = nn.Conv3d(4, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.out = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.norm(self.enc(x)))
        return self.out(self.up(torch.relu(self.bn(self.down(skip)))) + skip)


class _Greedy(nn.Module):
    """Its program asks for 100 GB while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)
        self.norm = nn.BatchNorm3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hoard = torch.empty([25_000_000_000])  # 100 GB of float32
        return self.norm(self.conv(x)) + hoard[0]


def unregistered_torchscript(path: Path, seed: int = 0) -> tuple[Path, nn.Module]:
    """Traced, as releases usually are (a scripted InstanceNorm keeps its input checks as control flow, which
    the export writes as If/Loop nodes: refused by the operator allow-list)."""
    torch.manual_seed(seed)
    model = _Unregistered().eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 16, 16, 16)), str(path))
    return path, model


def greedy_torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(_Greedy()), str(path))
    return path
