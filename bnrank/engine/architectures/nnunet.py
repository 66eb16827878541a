"""nnU-Net v2 networks, rebuilt from the `architecture` entry of a model's plans.

nnU-Net v2 does not ship its networks as code: `plans.json` names a class from dynamic-network-architectures
(`network_class_name`), its constructor arguments (`arch_kwargs`) and which of those are classes to import
(`_kw_requires_import`: conv/norm/dropout op, nonlinearity). nnU-Net resolves those dotted names with
`pydoc.locate`, i.e. imports whatever the file names. Here every name is looked up in an allow-list of the
classes real plans use, and anything else (say `os.system`) is refused with its name; the arguments must be
JSON literals within sane bounds, checked before anything is built.

The registered architecture `nnunet` takes the (checked) architecture entry as build options, so a
candidate and its random-init control are rebuilt from the same description in any process (a worker
reading a stored row, a CLI ranking). The head is `decoder.seg_layers` — one 1×1×1 conv per decoder stage
(deep supervision), every one of which depends on the label count. Networks are built with deep supervision
off, so only the last one runs: the others are loaded as head keys but neither re-initialised nor trained
(`Architecture.idle_head`), which keeps the head's seeded start the same as in an ONNX export of the network.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from bnrank.engine.architectures.registry import Architecture, register
from bnrank.engine.errors import BNRankError, TrainingError

try:  # dynamic-network-architectures 0.4 keeps it apart; 0.4.1+ (what current nnU-Net installs) in unet.py
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the installed version
    from dynamic_network_architectures.architectures.residual_unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD


class NNUNetPlansError(BNRankError):
    """A plans' architecture entry names something outside the allow-list or has unusable arguments."""


_DNA = "dynamic_network_architectures"
NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    f"{_DNA}.architectures.unet.PlainConvUNet": PlainConvUNet,
    f"{_DNA}.architectures.unet.ResidualEncoderUNet": ResidualEncoderUNet,
    f"{_DNA}.architectures.residual_unet.ResidualEncoderUNet": ResidualEncoderUNet,
}


def _aliases(cls: type, *modules: str) -> dict[str, type]:
    """`torch.nn.X` and `torch.nn.modules.<module>.X`: the two spellings nnU-Net's plans use."""
    names = {f"torch.nn.{cls.__name__}": cls}
    names.update({f"torch.nn.modules.{module}.{cls.__name__}": cls for module in modules})
    return names


# Per argument: the classes it may name, and the keyword arguments (with JSON-literal values) they may get.
OPS: dict[str, dict[str, type]] = {
    "conv_op": _aliases(nn.Conv3d, "conv"),
    "norm_op": {**_aliases(nn.InstanceNorm3d, "instancenorm"), **_aliases(nn.BatchNorm3d, "batchnorm")},
    "dropout_op": _aliases(nn.Dropout3d, "dropout"),
    "nonlin": {
        **_aliases(nn.LeakyReLU, "activation"),
        **_aliases(nn.ReLU, "activation"),
        **_aliases(nn.ELU, "activation"),
        **_aliases(nn.GELU, "activation"),
        **_aliases(nn.PReLU, "activation"),
    },
    "block": {
        f"{_DNA}.building_blocks.residual.BasicBlockD": BasicBlockD,
        f"{_DNA}.building_blocks.residual.BottleneckD": BottleneckD,
    },
}
OP_KWARGS: dict[str, frozenset[str]] = {
    "norm_op_kwargs": frozenset({"eps", "momentum", "affine", "track_running_stats"}),
    "dropout_op_kwargs": frozenset({"p", "inplace"}),
    "nonlin_kwargs": frozenset({"inplace", "negative_slope", "alpha", "approximate", "num_parameters", "init"}),
}
HEAD = ("decoder.seg_layers.",)

# Bounds far above any published plans (nnU-Net's largest presets: 7 stages, 320-512 features, 6 blocks).
MAX_STAGES = 10
MAX_FEATURES = 4096
MAX_KERNEL = 7
MAX_STRIDE = 4
MAX_BLOCKS = 16


def _class_name(value: Any, what: str, allowed: Mapping[str, type]) -> type | None:
    if value is None and what in ("dropout_op", "norm_op", "nonlin"):
        return None
    if isinstance(value, str) and value in allowed:
        return allowed[value]
    shown = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in allowed}))
    raise NNUNetPlansError(
        f"nnU-Net plans: {what} {value!r} is not allowed; only these classes are built: {shown} "
        "(named by their torch / dynamic_network_architectures paths)"
    )


def resolve_network_class(name: Any) -> type[nn.Module]:
    """The allow-listed dynamic-network-architectures class the plans name (dotted path or bare name)."""
    if isinstance(name, str):
        if name in NETWORK_CLASSES:
            return NETWORK_CLASSES[name]
        bare = {cls.__name__: cls for cls in NETWORK_CLASSES.values()}
        if name in bare:
            return bare[name]
    raise NNUNetPlansError(
        f"nnU-Net plans: network_class_name {name!r} is not allowed; only PlainConvUNet and ResidualEncoderUNet "
        f"from dynamic_network_architectures are built"
    )


def _int_list(value: Any, what: str, n: int, low: int, high: int, *, nested: bool = False) -> None:
    """An int, or n entries (each an int or, with `nested`, a list of 3 ints), all in [low, high]."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and len(value) != n:
        raise NNUNetPlansError(f"nnU-Net plans: {what} has {len(value)} entries, n_stages needs {n}")
    for item in items:
        parts = item if nested and isinstance(item, (list, tuple)) else [item]
        if nested and isinstance(item, (list, tuple)) and len(item) != 3:
            raise NNUNetPlansError(f"nnU-Net plans: {what} entry {item!r} is not 3D (BNRank works on 3D volumes)")
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, int) or not low <= part <= high:
                raise NNUNetPlansError(f"nnU-Net plans: {what} entry {part!r} is not an integer in [{low}, {high}]")


def _literal_kwargs(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise NNUNetPlansError(f"nnU-Net plans: {what} must be a mapping or null, got {type(value).__name__}")
    unknown = sorted(set(value) - OP_KWARGS[what])
    if unknown:
        raise NNUNetPlansError(f"nnU-Net plans: {what} has unsupported key(s) {', '.join(map(str, unknown))}")
    for key, item in value.items():
        if item is not None and not isinstance(item, (bool, int, float)):
            raise NNUNetPlansError(f"nnU-Net plans: {what}.{key} must be a number, a boolean or null")
        if isinstance(item, float) and not math.isfinite(item):
            raise NNUNetPlansError(f"nnU-Net plans: {what}.{key} is not finite")
    return dict(value)


def constructor_kwargs(network_class_name: Any, arch_kwargs: Any, kw_requires_import: Any = ()) -> dict[str, Any]:
    """Checked constructor arguments (classes resolved through the allow-lists), without in/out channels."""
    cls = resolve_network_class(network_class_name)
    if not isinstance(arch_kwargs, Mapping):
        raise NNUNetPlansError("nnU-Net plans: arch_kwargs must be a mapping")
    requires = list(kw_requires_import or ())
    bad = [k for k in requires if k not in OPS]
    if bad:
        raise NNUNetPlansError(
            f"nnU-Net plans: _kw_requires_import names {', '.join(map(repr, bad))}; only {', '.join(OPS)} are imported"
        )
    params = inspect.signature(cls).parameters
    allowed = set(params) - {"input_channels", "num_classes", "deep_supervision"}
    unknown = sorted(set(arch_kwargs) - allowed)
    if unknown:
        raise NNUNetPlansError(f"nnU-Net plans: {cls.__name__} does not take {', '.join(map(str, unknown))}")
    kwargs = dict(arch_kwargs)
    n = kwargs.get("n_stages")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_STAGES:
        raise NNUNetPlansError(f"nnU-Net plans: n_stages {n!r} is not an integer in [1, {MAX_STAGES}]")
    _int_list(kwargs.get("features_per_stage"), "features_per_stage", n, 1, MAX_FEATURES)
    _int_list(kwargs.get("kernel_sizes"), "kernel_sizes", n, 1, MAX_KERNEL, nested=True)
    _int_list(kwargs.get("strides"), "strides", n, 1, MAX_STRIDE, nested=True)
    blocks = "n_blocks_per_stage" if "n_blocks_per_stage" in params else "n_conv_per_stage"
    _int_list(kwargs.get(blocks), blocks, n, 1, MAX_BLOCKS)
    _int_list(kwargs.get("n_conv_per_stage_decoder"), "n_conv_per_stage_decoder", n - 1, 1, MAX_BLOCKS)
    for key in ("bottleneck_channels",):
        if kwargs.get(key) is not None:
            _int_list(kwargs[key], key, n, 1, MAX_FEATURES)
    if kwargs.get("stem_channels") is not None:
        _int_list(kwargs["stem_channels"], "stem_channels", 1, 1, MAX_FEATURES)
    for key in ("conv_bias", "nonlin_first"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise NNUNetPlansError(f"nnU-Net plans: {key} must be true or false")
    for key in OPS:  # a class-valued argument is resolved whether or not _kw_requires_import lists it
        if key in kwargs:
            kwargs[key] = _class_name(kwargs[key], key, OPS[key])
    if kwargs.get("conv_op") is None:
        raise NNUNetPlansError("nnU-Net plans: conv_op is missing; BNRank builds 3D networks (Conv3d)")
    for key in OP_KWARGS:
        if key in kwargs:
            kwargs[key] = _literal_kwargs(kwargs[key], key)
    return kwargs


def build_nnunet(
    in_channels: int = 1,
    out_channels: int = 2,
    *,
    network_class_name: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    kw_requires_import: list[str] | tuple[str, ...] = (),
) -> nn.Module:
    """Build the network a plans' architecture entry describes, initialised as nnU-Net initialises it.

    Deep supervision is off: the network returns the full-resolution logits only, as at nnU-Net inference.
    """
    if network_class_name is None or arch_kwargs is None:
        raise NNUNetPlansError(
            "nnunet needs its plans' architecture entry (network_class_name, arch_kwargs); upload the nnU-Net "
            "model folder (or its zip) or a checkpoint_final.pth, which carry them"
        )
    kwargs = constructor_kwargs(network_class_name, arch_kwargs, kw_requires_import)
    cls = resolve_network_class(network_class_name)
    try:
        model = cls(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **kwargs)
    except (TypeError, ValueError, AssertionError, IndexError, KeyError) as exc:
        raise NNUNetPlansError(
            f"nnU-Net plans: cannot build {cls.__name__} from this architecture entry: {exc}"
        ) from exc
    initialize = getattr(model, "initialize", None)
    if callable(initialize):
        model.apply(initialize)
    model.register_forward_pre_hook(_input_check(input_multiple(kwargs["strides"])))
    return model


def input_multiple(strides: Any) -> tuple[int, int, int]:
    """Per axis, what an input's size must be a multiple of: the product of the encoder's strides."""
    out = [1, 1, 1]
    for stride in strides:
        values = stride if isinstance(stride, (list, tuple)) else [stride] * 3
        out = [o * int(v) for o, v in zip(out, values, strict=True)]
    return (out[0], out[1], out[2])


def _input_check(multiple: tuple[int, int, int]) -> Any:
    """A forward pre-hook refusing inputs the decoder cannot put back together.

    nnU-Net always feeds patches that are multiples of its strides; a smaller or odd patch would otherwise
    fail deep inside a skip concatenation with a shape error naming no option. A hook leaves the state
    dict (and so checkpoint matching) untouched.
    """

    def check(module: nn.Module, args: tuple[Any, ...]) -> None:
        shape = tuple(args[0].shape[-3:]) if args and hasattr(args[0], "shape") else ()
        if len(shape) == 3 and any(size % m for size, m in zip(shape, multiple, strict=True)):
            raise TrainingError(
                f"nnunet: input of size {shape} is not a multiple of {multiple} (the product of the plans' "
                "strides); use a patch size that is, e.g. the plans' own patch_size"
            )

    return check


def _deep_supervision_layers(model: nn.Module) -> set[str]:
    """The seg layers of the decoder's upper stages: with deep supervision off (how `build_nnunet` builds)
    the decoder runs only the last one."""
    decoder = getattr(model, "decoder", None)
    layers = getattr(decoder, "seg_layers", None)
    if layers is None or getattr(decoder, "deep_supervision", False):
        return set()
    return {f"decoder.seg_layers.{i}" for i in range(len(layers) - 1)}


def _never_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A bare state dict does not say kernel sizes, strides and ops together; nnU-Net weights need the plans."""
    return None


NNUNET = register(
    Architecture(
        name="nnunet",
        description="nnU-Net v2 (PlainConvUNet, ResidualEncoderUNet from dynamic-network-architectures), "
        "rebuilt from the model's plans",
        build=build_nnunet,
        head=HEAD,
        infer=_never_from_shapes,
        idle_head=_deep_supervision_layers,
    )
)
