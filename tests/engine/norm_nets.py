"""Tiny networks with each normalisation kind, for the norm-only tests (engine/norms.py, bn_only.py)."""

from __future__ import annotations

import torch
from torch import nn

from bnrank.engine.architectures import Architecture

CHANNELS = 8
KINDS = {
    # name: (expected label, inserted?)
    "batch": ("batch", False),
    "instance": ("instance", False),
    "instance-noaffine": ("instance+affine-inserted", True),
    "group": ("group", False),
    "layer": ("layer", False),
    "layer-noaffine": ("layer+affine-inserted", True),
}


def make_norm(kind: str, channels: int = CHANNELS) -> nn.Module:
    return {
        "batch": lambda: nn.BatchNorm3d(channels),
        "instance": lambda: nn.InstanceNorm3d(channels, affine=True),
        "instance-noaffine": lambda: nn.InstanceNorm3d(channels),
        "group": lambda: nn.GroupNorm(2, channels),
        "layer": lambda: nn.LayerNorm(channels),
        "layer-noaffine": lambda: nn.LayerNorm(channels, elementwise_affine=False),
        "none": nn.Identity,
    }[kind]()


class NormNet(nn.Module):
    """conv → norm → ReLU, twice, then a 1×1×1 head. LayerNorm runs channels-last (as in ConvNeXt/transformers)."""

    def __init__(self, kind: str, in_channels: int = 1, out_channels: int = 3) -> None:
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv3d(in_channels, CHANNELS, 3, padding=1)
        self.norm1 = make_norm(kind)
        self.conv2 = nn.Conv3d(CHANNELS, CHANNELS, 3, padding=1)
        self.norm2 = make_norm(kind)
        self.head = nn.Conv3d(CHANNELS, out_channels, 1)

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.kind.startswith("layer"):
            return norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self._norm(self.norm1, self.conv1(x)))
        x = torch.relu(self._norm(self.norm2, self.conv2(x)))
        return self.head(x)


def norm_arch(kind: str) -> Architecture:
    """An Architecture around NormNet(kind) whose head is ``head.``."""

    def build(in_channels: int = 1, out_channels: int = 3, **_: object) -> nn.Module:
        return NormNet(kind, in_channels, out_channels)

    return Architecture(f"tiny-{kind}", f"NormNet with {kind}", build, ("head.",), lambda shapes: None)


def norm_model(kind: str, seed: int = 3) -> NormNet:
    """NormNet(kind) drawn from ``seed``, its own γ/β moved off the identity so they read like trained ones."""
    torch.manual_seed(seed)
    model = NormNet(kind)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "weight", None), nn.Parameter) and not isinstance(m, nn.Conv3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model
