"""How much memory one training step needs, so a budget a worker cannot hold is refused when submitted.

A job's `patch_size` and `batch_size` decide a training step's memory far more than the network's
parameters do: `patch_size` 1024 × `batch_size` 256 is half a million times the default step, and would
only fail on the worker, hours later, as an out-of-memory crash. The service calls `check_step_memory`
with the memory a worker has and refuses such a budget up front.

Derivation (coarse on purpose; what matters is the order of magnitude and that it never under-counts badly):

* A 3D encoder–decoder works at resolution levels l = 0, 1, …; each halves every side, so level l holds
  V / 8^l voxels of a patch of V voxels, with c_l channels (c_0 at full resolution).
* Per level, the encoder and the decoder each run two convolutions; every convolution leaves tensors of
  c_l channels that the backward pass needs: its output (the BatchNorm input) and the normalised /
  activated output — about 8 saved tensors per level. The decoder adds its upsampled input and the
  concatenation with the skip (twice the channels), and the backward pass holds, at its peak, gradients of
  the same sizes as the largest level's activations. Together: about K = 16 tensors of c_l channels.
* So one step needs  bytes ≈ b · B · K · Σ_l c_l · V / 8^l  for B patches and b bytes per value (4 in
  fp32; bf16 autocast halves most of it, which this ignores, staying on the safe side), plus 16 bytes per
  parameter when the parameter count is given (weights, gradients, Adam's two moments).

Calibration (CPU, fp32, one step, peak RSS growth, tests/engine/test_limits.py repeats a small one): MONAI
BasicUNet (c = 32, 32, 64, 128, 256) at 64³ measured K ≈ 13 for BN-only and full training alike; the Models
Genesis unet3d (c = 64, 128, 256, 512) at 48³ K ≈ 14. MONAI's UNet preset downsamples in its first layer,
so its real need is about a third of what its channel list predicts here — an over-estimate, which is the
side a refusal should err on.

The default widths are unet3d's, the preset with the widest full-resolution layers, because the service
bounds a budget before it knows which candidates a ranking will train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bnrank.engine.errors import LimitExceededError

# Tensors of c_l channels alive per level during one step (see the module docstring).
ACTIVATION_FACTOR = 16
# Channels per resolution level (full resolution first) of the widest built-in preset, unet3d at width 32.
REFERENCE_LEVEL_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)
BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + two Adam moments
GiB = 1024**3


def _voxels(patch_size: int | Sequence[int]) -> int:
    sides = [patch_size] * 3 if isinstance(patch_size, int) else list(patch_size)
    if len(sides) == 1:
        sides = sides * 3
    if len(sides) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
        raise ValueError(f"patch_size must be one or three positive whole numbers, got {patch_size!r}")
    return math.prod(sides)


def step_memory_bytes(
    patch_size: int | Sequence[int],
    batch_size: int,
    *,
    level_channels: Sequence[int] = REFERENCE_LEVEL_CHANNELS,
    bytes_per_value: int = 4,
    n_parameters: int = 0,
    factor: float = ACTIVATION_FACTOR,
) -> int:
    """Estimated peak memory of one training step in bytes: b · B · K · Σ_l c_l · V / 8^l (+ 16 per parameter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    voxels = _voxels(patch_size)
    per_patch = sum(channels * voxels / 8**level for level, channels in enumerate(level_channels))
    activations = bytes_per_value * batch_size * factor * per_patch
    return int(activations) + BYTES_PER_PARAMETER * n_parameters


def max_batch_size(
    patch_size: int | Sequence[int],
    memory_bytes: int,
    *,
    level_channels: Sequence[int] = REFERENCE_LEVEL_CHANNELS,
    bytes_per_value: int = 4,
    n_parameters: int = 0,
) -> int:
    """The largest batch of `patch_size` patches whose step fits in `memory_bytes` (0 when none does)."""
    fixed = BYTES_PER_PARAMETER * n_parameters
    one = step_memory_bytes(
        patch_size, 1, level_channels=level_channels, bytes_per_value=bytes_per_value
    )
    return max(int((memory_bytes - fixed) // max(one, 1)), 0)


def check_step_memory(
    patch_size: int | Sequence[int],
    batch_size: int,
    memory_bytes: int,
    *,
    level_channels: Sequence[int] = REFERENCE_LEVEL_CHANNELS,
    bytes_per_value: int = 4,
    n_parameters: int = 0,
) -> int:
    """Refuse (LimitExceededError) a patch/batch whose step would not fit in `memory_bytes`; return the estimate.

    The message names the estimate, the memory and the largest batch that would fit at this patch size,
    so the user can fix the request rather than guess.
    """
    need = step_memory_bytes(
        patch_size,
        batch_size,
        level_channels=level_channels,
        bytes_per_value=bytes_per_value,
        n_parameters=n_parameters,
    )
    if need > memory_bytes:
        fits = max_batch_size(
            patch_size,
            memory_bytes,
            level_channels=level_channels,
            bytes_per_value=bytes_per_value,
            n_parameters=n_parameters,
        )
        hint = f"at most batch_size {fits} fits at this patch size" if fits else "use a smaller patch_size"
        raise LimitExceededError(
            f"patch_size {patch_size} × batch_size {batch_size} needs about {need / GiB:.1f} GiB for one "
            f"training step, more than the {memory_bytes / GiB:.1f} GiB a worker has; {hint}"
        )
    return need
