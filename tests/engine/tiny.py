"""Tiny learnable tasks, budgets and networks shared by the engine tests: a training run takes a second.

Everything is seeded, so two calls with the same arguments give the same task, budget and weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bnrank.engine.architectures import build_model
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.training.patches import TaskData, Volume

WIDTH = 4
# the narrowest build of each architecture the alchemy tests run on
NARROW = {
    "unet3d": {"width": WIDTH},
    "medicalnet_resnet10": {"width": 8},
    "monai_unet": {},
}


def blob_task(n: int = 4, shape=(20, 20, 20), seed: int = 0) -> TaskData:
    """Bright spheres (class 1) and dim cubes (class 2) on noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    vols = []
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        c = rng.integers(6, 14, 3)
        label[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 16] = 1
        a = rng.integers(1, 6, 3)
        label[a[0] : a[0] + 4, a[1] : a[1] + 4, a[2] : a[2] + 4] = 2
        image = (label == 1) * 2.0 + (label == 2) * 1.0 + rng.normal(0, 0.3, shape)
        vols.append(Volume(f"case_{i}", image[None].astype(np.float32), label))
    return TaskData(vols[:-1], vols[-1:], ["background", "sphere", "cube"])


def small_config(**kw) -> TrainConfig:
    base = {
        "max_steps": 6,
        "patch_size": (16, 16, 16),
        "batch_size": 2,
        "val_every": 3,
        "patience": 5,
        "lr": 1e-2,
        "precision": "fp32",
    }
    return TrainConfig(**{**base, **kw})


def narrow_model(name: str, out_channels: int = 3, seed: int = 5) -> nn.Module:
    """``name`` at its :data:`NARROW` width, drawn from ``seed``."""
    torch.manual_seed(seed)
    return build_model(name, in_channels=1, out_channels=out_channels, **NARROW[name])


def weaken_channels(model: nn.Module, bn_name: str, channels: list[int], value: float = 1e-3) -> None:
    """γ = ``value`` (near 0 by default) for ``channels`` of one BN, plus a bias and running statistics that a
    reset would undo."""
    bn = dict(model.named_modules())[bn_name]
    with torch.no_grad():
        bn.weight[channels] = value
        bn.bias[channels] = 0.3
        bn.running_mean[channels] = 0.7
        bn.running_var[channels] = 2.0


class UnpairedBNs(nn.Module):
    """BNs that no conv feeds directly: on the raw input, after an in-place ReLU, after a concat."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm3d(1)
        self.conv_a = nn.Conv3d(1, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm3d(4)
        self.conv_b = nn.Conv3d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn_b = nn.BatchNorm3d(4)
        self.bn_cat = nn.BatchNorm3d(8)
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn_a(self.conv_a(self.bn_in(x)))
        b = self.bn_b(self.relu(self.conv_b(a)))
        return self.head(self.bn_cat(torch.cat([a, b], 1)))
