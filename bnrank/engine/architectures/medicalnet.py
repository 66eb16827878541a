"""MedicalNet (Tencent/MedicalNet, Med3D) 3D ResNets with their segmentation head, key for key.

Layout follows models/resnet.py of MedicalNet: a stride-2 7³ stem and max-pool, four stages of BasicBlock
(10/18/34) or Bottleneck (50) with layer3/layer4 kept at stride 1 and dilated 2/4, and the `conv_seg` head.
The head ends at 1/4 of the input resolution, so `forward` upsamples the logits trilinearly back to the
input size; without that the network could not be scored voxel for voxel against a label map.

Shortcuts: "B" is a 1×1 conv + BN `downsample`; "A" is a parameter-free strided, zero-padded identity.
The MedicalNet README lists the released weights as resnet-10 B, resnet-18 A, resnet-34 A, resnet-50 B
(and B for 101/152/200). The default here is "B" (MedicalNet's own default); `infer` reads the real type
from whether `downsample` keys exist, so released 18/34 files are rebuilt with "A" automatically.
MedicalNet's "A" shortcut detaches the padded identity from the graph (`Variable(out.data)`); ours does
not, which changes no tensor in a checkpoint and lets gradients reach earlier blocks through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnrank.engine.architectures.registry import (
    Architecture,
    Shapes,
    count_blocks,
    register,
    reproduces,
)
from bnrank.engine.errors import BNRankError

HEAD = ("conv_seg.",)
HEAD_CHANNELS = 32  # fixed in MedicalNet; kept at any width so the head stays shaped as released
SHORTCUTS = ("A", "B")

# depth → (bottleneck?, blocks per stage)
DEPTHS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    10: (False, (1, 1, 1, 1)),
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
}


def _conv3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


class _ZeroPadShortcut(nn.Module):
    """Shortcut "A": subsample by striding and pad the new channels with zeros; holds no tensors."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s > 1:
            x = x[:, :, ::s, ::s, ::s]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3(in_channels, planes, stride=stride, dilation=dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, in_channels: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride=stride, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class MedicalNetResNet(nn.Module):
    """MedicalNet 3D ResNet with `conv_seg`; `width` is the stem channel count (64 as released)."""

    def __init__(
        self, depth: int, in_channels: int = 1, out_channels: int = 2, width: int = 64, shortcut: str = "B"
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise BNRankError(f"MedicalNet depth {depth} is not supported; choose one of {sorted(DEPTHS)}")
        if shortcut not in SHORTCUTS:
            raise BNRankError(f"MedicalNet shortcut must be 'A' or 'B', got {shortcut!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise BNRankError(f"MedicalNet width must be a positive integer, got {width!r}")
        bottleneck, blocks = DEPTHS[depth]
        block = _Bottleneck if bottleneck else _BasicBlock
        self._channels = width
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        # (planes, stride, dilation) per stage, exactly MedicalNet's
        stages = ((width, 1, 1), (2 * width, 2, 1), (4 * width, 1, 2), (8 * width, 1, 4))
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(block, planes, count, stride, dilation, shortcut)
            for (planes, stride, dilation), count in zip(stages, blocks, strict=True)
        )
        top = 8 * width * block.expansion
        self.conv_seg = nn.Sequential(
            nn.ConvTranspose3d(top, HEAD_CHANNELS, kernel_size=2, stride=2),
            nn.BatchNorm3d(HEAD_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv3d(HEAD_CHANNELS, HEAD_CHANNELS, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(HEAD_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv3d(HEAD_CHANNELS, out_channels, kernel_size=1, bias=False),
        )
        self._init_like_medicalnet()

    def _make_layer(
        self,
        block: type[_BasicBlock] | type[_Bottleneck],
        planes: int,
        count: int,
        stride: int,
        dilation: int,
        shortcut: str,
    ) -> nn.Sequential:
        out = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self._channels != out:
            if shortcut == "A":
                downsample = _ZeroPadShortcut(out, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self._channels, out, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(out),
                )
        layers = [block(self._channels, planes, stride, dilation, downsample)]
        self._channels = out
        layers += [block(out, planes, 1, dilation, None) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def _init_like_medicalnet(self) -> None:
        """Same initialisation as MedicalNet, so a from-scratch build behaves like theirs."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.conv_seg(out)
        return F.interpolate(out, size=x.shape[2:], mode="trilinear", align_corners=False)


def _builder(depth: int) -> Callable[..., MedicalNetResNet]:
    def build(
        in_channels: int = 1, out_channels: int = 2, *, width: int = 64, shortcut: str = "B"
    ) -> MedicalNetResNet:
        """Registry builder; options are keyword-only so a typo fails instead of shifting arguments."""
        return MedicalNetResNet(depth, in_channels, out_channels, width=width, shortcut=shortcut)

    build.__name__ = f"build_medicalnet_resnet{depth}"
    return build


def _inferrer(depth: int, build: Callable[..., nn.Module]) -> Callable[[Shapes], dict[str, Any] | None]:
    bottleneck, blocks = DEPTHS[depth]

    def infer(shapes: Shapes) -> dict[str, Any] | None:
        """Recognise this depth from block counts and block type; encoder-only releases included."""
        stem = shapes.get("conv1.weight")
        if stem is None or len(stem) != 5 or tuple(stem[2:]) != (7, 7, 7):
            return None
        if ("layer1.0.conv3.weight" in shapes) != bottleneck:
            return None
        if tuple(count_blocks(shapes, f"layer{i}") for i in range(1, 5)) != blocks:
            return None
        has_downsample = any(".downsample.0.weight" in key for key in shapes)
        kwargs: dict[str, Any] = {
            "in_channels": stem[1],
            "width": stem[0],
            "shortcut": "B" if has_downsample else "A",
        }
        final = shapes.get("conv_seg.6.weight")
        if final is not None:
            kwargs["out_channels"] = final[0]
        return kwargs if reproduces(build, kwargs, shapes, HEAD, allow_extra=True) else None

    infer.__name__ = f"infer_medicalnet_resnet{depth}"
    return infer


def _register(depth: int) -> Architecture:
    build = _builder(depth)
    kind = "Bottleneck" if DEPTHS[depth][0] else "BasicBlock"
    return register(
        Architecture(
            name=f"medicalnet_resnet{depth}",
            description=(
                f"MedicalNet 3D ResNet-{depth} ({kind}, Tencent/MedicalNet) with its conv_seg head; "
                "options: width (64), shortcut ('A' or 'B')"
            ),
            build=build,
            head=HEAD,
            infer=_inferrer(depth, build),
        )
    )


MEDICALNET = {depth: _register(depth) for depth in DEPTHS}
