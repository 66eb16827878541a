"""The Models Genesis 3D U-Net, laid out so the public checkpoints load key for key.

Attribute names, nesting and channel plan follow MrGiovanni/ModelsGenesis (pytorch/unet3d.py): at full
width (32) with one input and one output channel the network has exactly 19,073,665 parameters.

Two deliberate departures from the original, neither of which changes a key or a shape:

* Normalisation. The original's `ContBatchNorm3d` always normalises with batch statistics, even in eval
  mode. Here it is a plain `nn.BatchNorm3d` (same weight/bias/running_mean/running_var/num_batches_tracked
  tensors), so eval mode uses the running statistics. That is what BN-only evaluation relies on: after
  BN-only training the running statistics have been re-estimated on the target data, and validation must
  use them rather than whatever statistics one validation batch happens to have.
* Output. The original ends in a sigmoid; this returns raw logits, the form every loss and metric in the
  engine expects.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnrank.engine.architectures.registry import Architecture, Shapes, register, reproduces
from bnrank.engine.errors import BNRankError

ACTIVATIONS = ("relu", "prelu", "elu")
HEAD = ("out_tr.",)


def _activation(act: str, channels: int) -> nn.Module:
    """The original's activation choices; PReLU carries one weight per channel, which checkpoints store."""
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "prelu":
        return nn.PReLU(channels)
    if act == "elu":
        return nn.ELU(inplace=True)
    raise BNRankError(f"unet3d: unknown act {act!r}; choose one of {', '.join(ACTIVATIONS)}")


class _LUConv(nn.Module):
    """conv → BN → activation, named `conv1`/`bn1`/`activation` as in the checkpoints."""

    def __init__(self, in_channels: int, out_channels: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.activation = _activation(act, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(x)))


def _double_conv(in_channels: int, mid: int, out: int, act: str) -> nn.Sequential:
    return nn.Sequential(_LUConv(in_channels, mid, act), _LUConv(mid, out, act))


class _Down(nn.Module):
    """Encoder stage; returns (pooled, skip). The deepest stage does not pool, as in the original."""

    def __init__(self, in_channels: int, mid: int, out: int, act: str, pool: bool) -> None:
        super().__init__()
        self.ops = _double_conv(in_channels, mid, out, act)
        self.maxpool = nn.MaxPool3d(2)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.ops(x)
        return (self.maxpool(skip) if self.pool else skip), skip


class _Up(nn.Module):
    """Decoder stage: transposed conv keeps the channel count, then two convs over [upsampled, skip]."""

    def __init__(self, in_channels: int, skip_channels: int, out: int, act: str) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, kernel_size=2, stride=2)
        self.ops = _double_conv(in_channels + skip_channels, out, out, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class _Out(nn.Module):
    """Segmentation head; kept as its own module so its keys read `out_tr.final_conv.*`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.final_conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class UNet3D(nn.Module):
    """Models Genesis UNet3D; `width` scales the whole channel plan (32 reproduces the released weights).

    Spatial input sizes must be divisible by 8 (three 2× poolings and matching transposed convs).
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 2, width: int = 32, act: str = "relu"
    ) -> None:
        super().__init__()
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise BNRankError(f"unet3d: width must be a positive integer, got {width!r}")
        w = width
        self.down_tr64 = _Down(in_channels, w, 2 * w, act, pool=True)
        self.down_tr128 = _Down(2 * w, 2 * w, 4 * w, act, pool=True)
        self.down_tr256 = _Down(4 * w, 4 * w, 8 * w, act, pool=True)
        self.down_tr512 = _Down(8 * w, 8 * w, 16 * w, act, pool=False)
        self.up_tr256 = _Up(16 * w, 8 * w, 8 * w, act)
        self.up_tr128 = _Up(8 * w, 4 * w, 4 * w, act)
        self.up_tr64 = _Up(4 * w, 2 * w, 2 * w, act)
        self.out_tr = _Out(2 * w, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skip64 = self.down_tr64(x)
        x, skip128 = self.down_tr128(x)
        x, skip256 = self.down_tr256(x)
        x, _ = self.down_tr512(x)
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        x = self.up_tr64(x, skip64)
        return self.out_tr(x)


def build_unet3d(
    in_channels: int = 1, out_channels: int = 2, *, width: int = 32, act: str = "relu"
) -> UNet3D:
    """Registry builder; options are keyword-only so a typo fails instead of shifting arguments."""
    return UNet3D(in_channels, out_channels, width=width, act=act)


def infer_unet3d(shapes: Shapes) -> dict[str, Any] | None:
    """Recognise a Models Genesis state dict and read in_channels, width, act and out_channels off it."""
    first = shapes.get("down_tr64.ops.0.conv1.weight")
    if first is None or len(first) != 5 or tuple(first[2:]) != (3, 3, 3):
        return None
    width, in_channels = first[0], first[1]
    # Cheap checks first: a few tensors that fix the channel plan, before building anything.
    plan = {
        "down_tr64.ops.1.conv1.weight": (2 * width, width, 3, 3, 3),
        "down_tr512.ops.1.conv1.weight": (16 * width, 8 * width, 3, 3, 3),
        "up_tr256.up_conv.weight": (16 * width, 16 * width, 2, 2, 2),
        "up_tr64.ops.1.conv1.weight": (2 * width, 2 * width, 3, 3, 3),
    }
    if any(tuple(shapes.get(key, ())) != shape for key, shape in plan.items()):
        return None
    kwargs: dict[str, Any] = {"in_channels": in_channels, "width": width}
    if "down_tr64.ops.0.activation.weight" in shapes:
        kwargs["act"] = "prelu"  # relu and elu have no tensors, so they cannot be told apart (or matter)
    final = shapes.get("out_tr.final_conv.weight")
    if final is not None:
        kwargs["out_channels"] = final[0]
    return kwargs if reproduces(build_unet3d, kwargs, shapes, HEAD, allow_extra=True) else None


UNET3D = register(
    Architecture(
        name="unet3d",
        description="Models Genesis 3D U-Net (MrGiovanni/ModelsGenesis); options: width (32), act (relu)",
        build=build_unet3d,
        head=HEAD,
        infer=infer_unet3d,
    )
)
