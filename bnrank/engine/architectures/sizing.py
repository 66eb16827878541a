"""Parameter counts of allow-listed MONAI networks, estimated from a network_def's arguments alone.

A `network_def` is a few hundred bytes of JSON, yet `channels: [100000, 200000]` asks PyTorch for tens of
gigabytes the moment the constructor runs (and a SwinUNETR cannot even be probed on the meta device: its
constructor computes with real tensors). So the size is worked out arithmetically first, and a def above
the cap is refused before any module exists.

The formulas follow each class's layout in `monai.networks.nets` (MONAI 1.x): every convolution counts
kernel volume × in × out weights plus a bias, every normalisation two affine vectors. They ignore details
that change the total by a few per cent (which convolutions omit their bias, PReLU weights, attention gates'
1×1 convolutions), so they are estimates, checked in tests/engine/test_limits.py to stay within a factor of
two of the real count over a range of settings; that is ample for a cap meant to catch 1000× blow-ups.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai.networks import nets

# Default cap: the largest networks people rank (SwinUNETR at feature_size 48, UNETR) have 60–100 M
# parameters; 200 M leaves room for wider variants while refusing the absurd (an fp32 200 M net is 0.8 GB).
DEFAULT_MAX_PARAMETERS = 200_000_000

Kwargs = Mapping[str, Any]


def _int(value: Any, what: str) -> int:
    """A count from JSON; bools and fractions are not counts, so they are refused rather than rounded."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _ints(value: Any, what: str) -> list[int]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of whole numbers, got {value!r}")
    return [_int(item, what) for item in value]


def _kvol(value: Any, what: str) -> int:
    """Voxels of a kernel given as one side (int) or per-dimension sides."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return math.prod(_int(side, what) for side in value) if value else 1
    return _int(value, what) ** 3


def _conv(cin: int, cout: int, kvol: int) -> int:
    """Weights + bias of one convolution (bias counted even where MONAI omits it: an upper estimate)."""
    return kvol * cin * cout + cout


def _norm(channels: int) -> int:
    return 2 * channels


def _unet(kw: Kwargs) -> int:
    channels = _ints(kw["channels"], "channels")
    strides = kw["strides"]
    if len(channels) < 2 or len(strides) < len(channels) - 1:
        raise ValueError("channels needs at least 2 entries and strides one fewer")
    k = _kvol(kw.get("kernel_size", 3), "kernel_size")
    uk = _kvol(kw.get("up_kernel_size", 3), "up_kernel_size")
    units = _int(kw.get("num_res_units", 0), "num_res_units")
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")

    def encoder(a: int, b: int, strided: bool) -> int:
        if units <= 0:
            return _conv(a, b, k) + _norm(b)
        total = _conv(a, b, k) + (units - 1) * _conv(b, b, k) + units * _norm(b)
        if strided or a != b:  # residual path: a strided k-conv, or a 1×1 conv to match channels
            total += _conv(a, b, k if strided else 1)
        return total

    total, previous = 0, cin
    for channel in channels[:-1]:
        total += encoder(previous, channel, True)
        previous = channel
    total += encoder(channels[-2], channels[-1], False)
    for level in range(len(channels) - 1):
        below = channels[level + 1] if level == len(channels) - 2 else channels[level]
        up_in, up_out = channels[level] + below, cout if level == 0 else channels[level - 1]
        total += _conv(up_in, up_out, uk) + _norm(up_out)
        if units > 0:
            total += _conv(up_out, up_out, k) + _norm(up_out)
    return total


def _basic_unet(kw: Kwargs) -> int:
    features = _ints(kw.get("features", (32, 32, 64, 128, 256, 32)), "features")
    if len(features) < 6:
        raise ValueError("features needs 6 entries")
    f = features
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")

    def two(a: int, b: int) -> int:
        return _conv(a, b, 27) + _conv(b, b, 27) + 2 * _norm(b)

    def upcat(a: int, cat: int, b: int, halves: bool = True) -> int:
        up = a // 2 if halves else a
        return _conv(a, up, 8) + two(cat + up, b)

    encoder = two(cin, f[0]) + two(f[0], f[1]) + two(f[1], f[2]) + two(f[2], f[3]) + two(f[3], f[4])
    decoder = upcat(f[4], f[3], f[3]) + upcat(f[3], f[2], f[2]) + upcat(f[2], f[1], f[1])
    decoder += upcat(f[1], f[0], f[5], halves=False) + _conv(f[5], cout, 1)
    return encoder + decoder


def _per_level(value: Any, n: int, what: str) -> list[int]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) < n:
            raise ValueError(f"{what} needs {n} entries")
        return [_kvol(item, what) for item in value]
    return [_kvol(value, what)] * n


def _dyn_unet(kw: Kwargs) -> int:
    strides = kw["strides"]
    if isinstance(strides, str) or not isinstance(strides, Sequence) or len(strides) < 2:
        raise ValueError("strides must list one entry per level (at least 2)")
    n = len(strides)
    kernels = _per_level(kw["kernel_size"], n, "kernel_size")
    up_kernels = _per_level(kw["upsample_kernel_size"], n - 1, "upsample_kernel_size")
    raw = kw.get("filters")
    filters = _ints(raw, "filters") if raw is not None else [min(2 ** (5 + i), 320) for i in range(n)]
    if len(filters) < n:
        raise ValueError("filters needs one entry per level")
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")
    res = bool(kw.get("res_block", False))

    def block(a: int, b: int, kvol: int) -> int:
        return _conv(a, b, kvol) + _conv(b, b, kvol) + 3 * _norm(b) + (_conv(a, b, 1) if res else 0)

    total = block(cin, filters[0], kernels[0])
    for level in range(1, n):
        total += block(filters[level - 1], filters[level], kernels[level])
    for level in range(n - 1, 0, -1):
        a, b = filters[level], filters[level - 1]
        total += _conv(a, b, up_kernels[level - 1]) + block(2 * b, b, kernels[level])
    heads = 1 + (_int(kw.get("deep_supr_num", 1), "deep_supr_num") if kw.get("deep_supervision") else 0)
    return total + heads * _conv(filters[0], cout, 1)


def _seg_res_net(kw: Kwargs) -> int:
    f = _int(kw.get("init_filters", 8), "init_filters")
    blocks_down = _ints(kw.get("blocks_down", (1, 2, 2, 4)), "blocks_down")
    blocks_up = _ints(kw.get("blocks_up", (1, 1, 1)), "blocks_up")
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")
    deconv = str(kw.get("upsample_mode", "nontrainable")).lower().endswith("deconv")

    def res_block(c: int) -> int:
        return 2 * _conv(c, c, 27) + 2 * _norm(c)

    total = _conv(cin, f, 27)
    for level, count in enumerate(blocks_down):
        c = f * 2**level
        total += (_conv(c // 2, c, 27) if level else 0) + count * res_block(c)
    for level, count in enumerate(blocks_up):
        c = f * 2 ** (len(blocks_up) - level)
        total += _conv(c, c // 2, 1) + (_conv(c // 2, c // 2, 8) if deconv else 0) + count * res_block(c // 2)
    return total + _norm(f) + _conv(f, cout, 1)


def _attention_unet(kw: Kwargs) -> int:
    channels = _ints(kw["channels"], "channels")
    if len(channels) < 2:
        raise ValueError("channels needs at least 2 entries")
    k = _kvol(kw.get("kernel_size", 3), "kernel_size")
    uk = _kvol(kw.get("up_kernel_size", 3), "up_kernel_size")
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")

    def conv_block(a: int, b: int) -> int:
        return _conv(a, b, k) + _conv(b, b, k) + 2 * _norm(b)

    total = conv_block(cin, channels[0]) + _conv(channels[0], cout, 1)
    for level in range(len(channels) - 1):
        a, b = channels[level], channels[level + 1]
        gate = 2 * _conv(a, a // 2, 1) + _conv(a // 2, 1, 1) + 2 * _norm(a // 2)
        total += conv_block(a, b) + _conv(b, a, uk) + _norm(a) + _conv(2 * a, a, k) + _norm(a) + gate
    return total


def _vnet(kw: Kwargs) -> int:
    """VNet has a fixed width (16…256 channels, 5×5×5 kernels); only its ends depend on the arguments."""
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")
    width = [16, 32, 64, 128, 256]
    total = _conv(cin, 16, 125) + _norm(16)
    for level, convs in enumerate((1, 2, 3, 2)):  # down transitions: 2×2×2 stride-2 conv, then 5×5×5 convs
        a, b = width[level], width[level + 1]
        total += _conv(a, b, 8) + _norm(b) + convs * (_conv(b, b, 125) + _norm(b))
    # up transitions: transposed conv from the level below (concatenated with its skip), then 5×5×5 convs
    for up_in, width_out, convs in ((256, 256, 2), (256, 128, 2), (128, 64, 1), (64, 32, 1)):
        total += _conv(up_in, width_out // 2, 8) + _norm(width_out // 2)
        total += convs * (_conv(width_out, width_out, 125) + _norm(width_out))
    return total + _conv(32, cout, 125) + _norm(cout) + _conv(cout, cout, 1)


def _unetr(kw: Kwargs) -> int:
    h = _int(kw.get("hidden_size", 768), "hidden_size")
    mlp = _int(kw.get("mlp_dim", 3072), "mlp_dim")
    f = _int(kw.get("feature_size", 16), "feature_size")
    img = kw["img_size"]
    sides = _ints(img, "img_size") if isinstance(img, Sequence) else [_int(img, "img_size")] * 3
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")
    n_patches = math.prod(max(side // 16, 1) for side in sides)
    layer = 4 * h * h + 2 * h * mlp + mlp + 6 * h  # qkv + projection + MLP + two layer norms
    vit = _conv(cin, h, 16**3) + n_patches * h + 12 * layer + 2 * h

    def res_block(a: int, b: int) -> int:
        return _conv(a, b, 27) + _conv(b, b, 27) + (_conv(a, b, 1) if a != b else 0) + 3 * _norm(b)

    def pr_up(b: int, layers: int) -> int:
        return _conv(h, b, 8) + layers * (_conv(b, b, 8) + res_block(b, b))

    def up(a: int, b: int) -> int:
        return _conv(a, b, 8) + res_block(2 * b, b)

    decoder = res_block(cin, f) + pr_up(2 * f, 2) + pr_up(4 * f, 1) + pr_up(8 * f, 0)
    decoder += up(h, 8 * f) + up(8 * f, 4 * f) + up(4 * f, 2 * f) + up(2 * f, f) + _conv(f, cout, 1)
    return vit + decoder


def _swin_unetr(kw: Kwargs) -> int:
    f = _int(kw.get("feature_size", 24), "feature_size")
    depths = _ints(kw.get("depths", (2, 2, 2, 2)), "depths")
    heads = _ints(kw.get("num_heads", (3, 6, 12, 24)), "num_heads")
    window = kw.get("window_size", 7)
    sides = _ints(window, "window_size") if isinstance(window, Sequence) else [_int(window, "window_size")] * 3
    table = math.prod(2 * side - 1 for side in sides)
    ratio = float(kw.get("mlp_ratio", 4.0))
    patch = _kvol(kw.get("patch_size", 2), "patch_size")
    cin, cout = _int(kw["in_channels"], "in_channels"), _int(kw["out_channels"], "out_channels")
    v2 = bool(kw.get("use_v2", False))
    if len(heads) < len(depths):
        raise ValueError("num_heads needs one entry per stage")

    def res_block(a: int, b: int) -> int:
        return _conv(a, b, 27) + _conv(b, b, 27) + (_conv(a, b, 1) if a != b else 0) + 3 * _norm(b)

    total = _conv(cin, f, patch)
    for stage, depth in enumerate(depths):
        dim = f * 2**stage
        block = 4 * dim * dim + int(2 * ratio * dim * dim) + table * heads[stage] + 10 * dim
        total += depth * block + 16 * dim * dim + _norm(8 * dim) + (res_block(dim, dim) if v2 else 0)
    top = f * 2 ** len(depths)

    def up(a: int, b: int) -> int:
        return _conv(a, b, 8) + res_block(2 * b, b)

    total += res_block(cin, f) + res_block(f, f) + res_block(2 * f, 2 * f) + res_block(4 * f, 4 * f)
    total += res_block(top, top) + up(top, top // 2)
    width = top // 2
    while width > f:
        total += up(width, width // 2)
        width //= 2
    return total + up(f, f) + _conv(f, cout, 1)


ESTIMATORS: dict[str, Callable[[Kwargs], int]] = {
    "UNet": _unet,
    "BasicUNet": _basic_unet,
    "DynUNet": _dyn_unet,
    "SegResNet": _seg_res_net,
    "AttentionUnet": _attention_unet,
    "VNet": _vnet,
    "UNETR": _unetr,
    "SwinUNETR": _swin_unetr,
}


def estimate_parameters(class_name: str, kwargs: Kwargs) -> int:
    """Estimated parameter count of `monai.networks.nets.<class_name>(**kwargs)`, without building it.

    `kwargs` are the full constructor arguments (the class's defaults are filled in for missing ones).
    Raises ValueError/TypeError/KeyError when an argument cannot be understood as a size; callers turn
    that into a user-facing refusal, because a def that cannot be sized must not be built either.
    """
    estimator = ESTIMATORS.get(class_name)
    if estimator is None:
        raise KeyError(f"no size estimate for {class_name}")
    params = inspect.signature(getattr(nets, class_name)).parameters
    full = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    full.update(kwargs)
    return max(int(estimator(full)), 0)
