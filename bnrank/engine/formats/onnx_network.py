"""A checked ONNX graph as a PyTorch module: the weights become torch layers norm-only evaluation can train.

Why a converter here rather than onnx2torch: onnx2torch (the converter on PyPI) declares torchvision and imports
it when it is imported (its NMS and RoIAlign converters), and PyPI's torchvision pins its own torch build: beside
the torch 2.13 CPU wheel BNRank runs on it fails to import (``operator torchvision::nms does not exist``) or pulls
in another torch. Its last release is from 2024. What BNRank needs is small (`onnx_graph.ALLOWED_OPS`), and norm-
only evaluation needs something a general converter does not give: the normalisations as real ``nn.BatchNorm*``
/ ``nn.InstanceNorm*`` modules (so the engine finds, trains and reports them like any network's), the
convolutions as ``nn.Conv*`` (so the head is one module to re-initialise), and everything else as fixed
arithmetic.

`structure` splits a graph into a `GraphSpec` (the nodes, the shapes of the weights, the small constants the
graph computes with) and the state dict of its weights, keyed by module: the spec is what an `Architecture`
builds from, so the random-init control is the same graph with fresh weights, and the head (the last convolution
feeding the output) is re-sized for the task's classes like any registered network's.

Normalisations: ``BatchNormalization`` becomes ``nn.BatchNorm{1,2,3}d`` with the file's scale, bias and running
statistics; it is then in the engine's hands exactly as a registered BatchNorm network's: train mode (batch
statistics, running statistics re-estimated) while norm-only training runs, eval mode (running statistics) to
validate. An export keeps its BatchNorm nodes only in training mode (``torch.onnx.export(...,
training=TrainingMode.TRAINING)``); the node's ``training_mode`` flag is not what decides the mode here, the
evaluation's phase is, so a Models Genesis export (whose own BatchNorm always uses batch statistics) scores as its
``.pt`` weights do. ``InstanceNormalization`` becomes ``nn.InstanceNorm*``: with its affine when the file's scale
and bias are anything but the identity, and without one when they are exactly 1 and 0 (what exporters write for
``affine=False``), so the engine inserts and reports its identity affine as for any InstanceNorm without affine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnrank.engine.architectures.registry import Architecture
from bnrank.engine.errors import CheckpointError, CorruptCheckpointError
from bnrank.engine.formats.onnx_graph import OnnxGraph, OnnxNode, read_onnx

PARAMETRIC = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "PRelu"}
NORM_OPS = ("BatchNormalization", "InstanceNormalization")
# Ops that pass the head's output on unchanged in channel count: the head is looked for through them.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
_THROUGH = {"Identity", "Dropout", "Softmax", "LogSoftmax", "Sigmoid", "Resize", "Cast", "Tanh", "Clip"}
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
_INT64_MAX = 2**63 - 1


class ConversionError(CheckpointError):
    """The graph passed the checks but uses an operator in a way the converter does not follow."""


@dataclass
class Step:
    op: str
    key: str | None
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


@dataclass
class GraphSpec:
    """What a network is built from: the graph without its weights' values (those are the state dict)."""

    steps: list[Step]
    shapes: dict[str, tuple[int, ...]]
    """Module key → its weight's shape (plus ``<key>.bias`` where there is one)."""
    constants: dict[str, torch.Tensor]
    inputs: list[str]
    outputs: list[str]
    rank: int
    resized: list[str]
    """Keys of the layers on the output's channels (`_find_head`): resized to the task's classes."""
    affine: dict[str, bool] = field(default_factory=dict)
    """InstanceNormalization modules: whether the file's scale/bias are more than the identity."""
    head_inputs: list[str] = field(default_factory=list)
    """Head layers whose input is another head layer's output: their input channels follow the task too."""
    names: dict[str, str] = field(default_factory=dict)
    """Module key → the file's name of its weight (PyTorch exports keep the state-dict names)."""
    weight_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """The file's weight name → shape, for every initializer a layer takes: a state dict's signature."""
    head: list[str] = field(default_factory=list)
    """Keys re-initialised for a task: `resized`, or a recognised family's head (`with_head`)."""
    head_rule: str = "the convolutions feeding the first output (through activations, resizing, norms, sums)"
    node_names: dict[str, str] = field(default_factory=dict)
    """Module key → the file's name of its node (``/out_tr/final_conv/Conv`` in a PyTorch export)."""

    def __post_init__(self) -> None:
        self.head = self.head or list(self.resized)

    def report(self) -> dict[str, Any]:
        """The conversion report shown with the candidate: operators, norms found, head chosen."""
        ops: dict[str, int] = {}
        for step in self.steps:
            ops[step.op] = ops.get(step.op, 0) + 1
        norms = {op: ops[op] for op in NORM_OPS if op in ops}
        without = sorted(key for key, own in self.affine.items() if not own)
        return {
            "operators": dict(sorted(ops.items())),
            "norms": norms,
            "norms_without_affine": len(without),
            "head": self.head,
            "head_rule": self.head_rule,
            "spatial_dims": self.rank,
        }


def _key(name: str, used: set[str], op: str, index: int) -> str:
    base = re.sub(r"\.(weight|scale|slope)$", "", name) or f"{op}_{index}"
    key = re.sub(r"\W", "_", base).strip("_") or f"{op}_{index}"
    if key[0].isdigit():
        key = f"{op}_{key}"
    while key in used:
        key = f"{key}_{index}"
    used.add(key)
    return key


def _find_head(nodes: list[OnnxNode], outputs: list[str], keys: dict[int, str]) -> list[str]:
    """The layers whose channel count is the first output's: the convolutions feeding it, through ops that keep
    the channel count (activations, resizing, norms, and the sums of a residual unit, whose every branch ends in
    a head convolution), and the norms on that path. These are resized and re-initialised for a task."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.outputs}
    found: list[str] = []
    seen: set[int] = set()
    todo = [outputs[0]] if outputs else []
    while todo:
        index = producer.get(todo.pop())
        if index is None or index in seen:
            continue
        seen.add(index)
        node = nodes[index]
        if node.op in ("Conv", "ConvTranspose"):
            found.append(keys[index])
        elif node.op in PARAMETRIC:  # a norm or PRelu on the head's channels
            found.append(keys[index])
            todo.append(node.inputs[0])
        elif node.op in _THROUGH:
            todo.append(node.inputs[0])
        elif node.op in _ELEMENTWISE:
            todo.extend(name for name in node.inputs if name)
    if not any(keys.get(i) in found and nodes[i].op in ("Conv", "ConvTranspose") for i in seen):
        convs = [keys[i] for i, n in enumerate(nodes) if n.op in ("Conv", "ConvTranspose")]
        return convs[-1:]
    return sorted(found)


def _fed_by_head(steps: list[Step], head: list[str]) -> set[str]:
    """Layers whose input carries a head layer's channels (a convolution after another in a residual head): their
    input side is resized with the head, so they are re-initialised with it."""
    carries: set[str] = set()
    fed: set[str] = set()
    for step in steps:
        inputs = step.inputs[:1] if step.key is not None else step.inputs
        derived = any(name in carries for name in inputs)
        if step.op in ("Conv", "ConvTranspose"):
            if derived:
                fed.add(step.key)  # type: ignore[arg-type]
            derived = step.key in head
        elif step.key is not None and derived:  # a norm or PRelu on the head's channels
            fed.add(step.key)
        elif step.key is None and step.op not in _THROUGH and step.op not in _ELEMENTWISE:
            derived = False
        if derived:
            carries.update(step.outputs[:1])
    return fed


def structure(graph: OnnxGraph) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Split a checked graph into its build description and the state dict of its weights."""
    # Exporters write some weights as Constant nodes (an InstanceNorm without affine: its ones and zeros)
    computed = {
        node.outputs[0]: node.attrs["value"]
        for node in graph.nodes
        if node.op == "Constant" and isinstance(node.attrs.get("value"), torch.Tensor)
    }
    inits = {**computed, **graph.initializers}
    used: set[str] = set()
    steps: list[Step] = []
    state: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    consumed: set[str] = set()
    keys: dict[int, str] = {}
    affine: dict[str, bool] = {}
    rank = 0
    for index, node in enumerate(graph.nodes):
        key = None
        if node.op in PARAMETRIC:
            weights = [name for name in node.inputs[1:] if name]
            missing = [name for name in weights if name not in inits]
            if missing:
                raise ConversionError(
                    f"{node.op} node {node.name or index} takes {missing[0]!r} from the graph, not from a stored "
                    "weight; BNRank converts graphs whose weights are initializers"
                )
            key = _key(weights[0], used, node.op, index)
            keys[index] = key
            names = _PARAM_NAMES[node.op]
            for role, name in zip(names, node.inputs[1:], strict=False):
                if name:
                    state[f"layers.{key}.{role}"] = inits[name]
                    consumed.add(name)
            shapes[key] = tuple(inits[weights[0]].shape)
            if node.op in ("Conv", "ConvTranspose"):
                rank = rank or inits[weights[0]].dim() - 2
                if len(node.inputs) > 2 and node.inputs[2]:
                    shapes[f"{key}.bias"] = tuple(inits[node.inputs[2]].shape)
            if node.op == "InstanceNormalization":
                scale, bias = state[f"layers.{key}.weight"], state[f"layers.{key}.bias"]
                affine[key] = not (bool((scale == 1).all()) and bool((bias == 0).all()))
                if not affine[key]:
                    del state[f"layers.{key}.weight"], state[f"layers.{key}.bias"]
        steps.append(Step(node.op, key, node.inputs, node.outputs, node.attrs))
    if rank == 0:
        raise ConversionError("the graph has no convolution; BNRank ranks convolutional segmentation networks")
    constants = {name: t for name, t in graph.initializers.items() if name not in consumed}
    head = _find_head(graph.nodes, graph.outputs, keys)
    fed = _fed_by_head(steps, head)
    head = sorted(set(head) | fed)
    names = {key: graph.nodes[index].inputs[1] for index, key in keys.items()}
    node_names = {key: graph.nodes[index].name for index, key in keys.items() if graph.nodes[index].name}
    weight_shapes = {name: tuple(inits[name].shape) for name in consumed if name in graph.initializers}
    spec = GraphSpec(
        steps, shapes, constants, graph.inputs, graph.outputs, rank, head, affine, sorted(fed), names, weight_shapes,
        node_names=node_names,
    )
    return spec, state


_PARAM_NAMES = {
    "Conv": ("weight", "bias"),
    "ConvTranspose": ("weight", "bias"),
    "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),
    "InstanceNormalization": ("weight", "bias"),
    "PRelu": ("weight",),
}


class Slope(nn.Module):
    """PRelu's learned slope, kept in the file's (broadcastable) shape."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full(shape, 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.weight)


def _pairs(pads: list[int], rank: int) -> tuple[list[int], list[int]]:
    pads = list(pads) or [0] * (2 * rank)
    return pads[:rank], pads[rank:]


def _torch_pad(begin: list[int], end: list[int]) -> list[int]:
    """ONNX's [b1..bn, e1..en] as F.pad's (last axis first) [bn, en, ..., b1, e1]."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [int(b), int(e)]
    return out


def _conv(step: Step, spec: GraphSpec, in_channels: int | None, out_channels: int | None) -> nn.Module:
    a = step.attrs
    shape = spec.shapes[step.key]  # type: ignore[index]
    rank = len(shape) - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ConversionError(f"{step.op} {step.key}: auto_pad={a['auto_pad']} is not converted; export explicit pads")
    begin, end = _pairs(a.get("pads", []), rank)
    group = int(a.get("group", 1))
    bias = f"{step.key}.bias" in spec.shapes
    common = {
        "kernel_size": tuple(shape[2:]),
        "stride": tuple(a.get("strides", [1] * rank)),
        "dilation": tuple(a.get("dilations", [1] * rank)),
        "groups": group,
        "bias": bias,
    }
    if step.op == "Conv":
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
        cin, cout = shape[1] * group, shape[0]
        cin = in_channels if in_channels is not None and group == 1 else cin
        cout = out_channels if out_channels is not None and group == 1 else cout
        padding = tuple(begin) if begin == end else 0
        return cls(cin, cout, padding=padding, **common)
    if "output_shape" in a:
        raise ConversionError(f"ConvTranspose {step.key}: output_shape is not converted; export with pads")
    if begin != end:
        raise ConversionError(f"ConvTranspose {step.key}: asymmetric pads are not converted")
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[rank - 1]
    cin, cout = shape[0], shape[1] * group
    cin = in_channels if in_channels is not None and group == 1 else cin
    cout = out_channels if out_channels is not None and group == 1 else cout
    return cls(cin, cout, padding=tuple(begin), output_padding=tuple(a.get("output_padding", [0] * rank)), **common)


def _module(step: Step, spec: GraphSpec, in_channels: int | None, out_channels: int | None) -> nn.Module:
    if step.op in ("Conv", "ConvTranspose"):
        return _conv(step, spec, in_channels, out_channels)
    channels = out_channels or in_channels or spec.shapes[step.key][0]  # type: ignore[index]
    eps = float(step.attrs.get("epsilon", 1e-5))
    if step.op == "BatchNormalization":
        cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spec.rank - 1]
        return cls(channels, eps=eps, momentum=1.0 - float(step.attrs.get("momentum", 0.9)))
    if step.op == "InstanceNormalization":
        cls = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[spec.rank - 1]
        return cls(channels, eps=eps, affine=spec.affine[step.key])  # type: ignore[index]
    shape = spec.shapes[step.key]  # type: ignore[index]
    return Slope((out_channels, *shape[1:]) if out_channels and len(shape) > 1 else shape)


class OnnxNetwork(nn.Module):
    """Runs a converted graph: torch layers for the weighted nodes, fixed arithmetic for the rest.

    The layers live in ``self.layers`` under keys taken from the file's weight names, so the state dict reads
    like the exporter's (``layers.down_tr64_ops_0_conv1.weight``) and the engine can wrap a normalisation in
    place (it looks modules up by name, and so does `forward`).
    """

    def __init__(self, spec: GraphSpec, in_channels: int | None = None, out_channels: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        first = {s.key for s in spec.steps if s.op == "Conv" and s.inputs and s.inputs[0] in spec.inputs[:1]}
        self.layers = nn.ModuleDict()
        for step in spec.steps:
            if step.key is None:
                continue
            cin = in_channels if step.key in first else out_channels if step.key in spec.head_inputs else None
            cout = out_channels if step.key in spec.resized else None
            self.layers[step.key] = _module(step, spec, cin, cout)
        self.constants = nn.Module()
        self._constant_names: dict[str, str] = {}
        for i, (name, value) in enumerate(spec.constants.items()):
            self.constants.register_buffer(f"c{i}", value.clone(), persistent=False)
            self._constant_names[name] = f"c{i}"

    @property
    def no_norm_hint(self) -> str:
        """Why a converted graph has no normalisation, for the engine's refusal: usually an inference export."""
        return (
            "An ONNX export in eval mode (torch.onnx.export's default) folds every BatchNorm into the convolution "
            "before it, so the graph has no normalisation left; export the model in train mode with "
            "training=torch.onnx.TrainingMode.TRAINING (and dynamic spatial axes) to keep its BatchNorm nodes"
        )

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor | None] = {"": None}
        for name, attr in self._constant_names.items():
            env[name] = getattr(self.constants, attr)
        for name, x in zip(self.spec.inputs, xs, strict=False):
            env[name] = x
        for step in self.spec.steps:
            names = step.inputs[:1] if step.key is not None else step.inputs  # a layer's weights are its own
            args = [env[name] if name in env else _missing(name) for name in names]
            result = self._run(step, args)
            if isinstance(result, tuple):
                for name, value in zip(step.outputs, result, strict=False):
                    env[name] = value
            else:
                env[step.outputs[0]] = result
        return env[self.spec.outputs[0]]  # type: ignore[return-value]

    def _run(self, step: Step, args: list[Any]) -> Any:
        if step.key is not None:
            module = self.layers[step.key]
            x = args[0]
            if step.op == "Conv":
                begin, end = _pairs(step.attrs.get("pads", []), self.spec.rank)
                if begin != end:
                    x = F.pad(x, _torch_pad(begin, end))
            return module(x)
        fn = _FUNCTIONS.get(step.op)
        if fn is None:
            raise ConversionError(f"operator {step.op} has no conversion")
        return fn(self, step.attrs, args)


def _missing(name: str) -> None:
    raise CorruptCheckpointError(f"the graph uses {name!r} before any node computes it")


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _dropout(net: OnnxNetwork, a: dict, args: list) -> Any:
    ratio = float(args[1]) if len(args) > 1 and args[1] is not None else float(a.get("ratio", 0.5))
    y = F.dropout(args[0], ratio, training=net.training)
    return (y, torch.ones_like(args[0], dtype=torch.bool))


def _pool(kind: str) -> Callable[[OnnxNetwork, dict, list], Any]:
    def run(net: OnnxNetwork, a: dict, args: list) -> Any:
        x = args[0]
        rank = x.dim() - 2
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise ConversionError(f"{kind} with auto_pad={a['auto_pad']} is not converted")
        kernel = a["kernel_shape"]
        strides = a.get("strides", [1] * rank)
        begin, end = _pairs(a.get("pads", []), rank)
        padding: Any = begin
        if begin != end:
            x = F.pad(x, _torch_pad(begin, end), value=float("-inf") if kind == "max" else 0.0)
            padding = [0] * rank
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
            return fn(x, kernel, strides, padding, a.get("dilations", [1] * rank), ceil_mode=ceil)
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
        return fn(x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))

    return run


def _resize(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x = args[0]
    scales = args[2] if len(args) > 2 else None
    sizes = args[3] if len(args) > 3 else None
    mode = a.get("mode", "nearest")
    coords = a.get("coordinate_transformation_mode", "half_pixel")
    rank = x.dim() - 2
    kwargs: dict[str, Any] = {}
    if mode == "nearest":
        if coords != "asymmetric" or a.get("nearest_mode", "round_prefer_floor") != "floor":
            raise ConversionError(f"Resize nearest with {coords}/{a.get('nearest_mode')} is not converted")
        kwargs["mode"] = "nearest"
    elif mode == "linear":
        kwargs["mode"] = ("linear", "bilinear", "trilinear")[rank - 1]
        if coords == "align_corners":
            kwargs["align_corners"] = True
        elif coords in ("half_pixel", "pytorch_half_pixel"):
            kwargs["align_corners"] = False
        else:
            raise ConversionError(f"Resize linear with {coords} coordinates is not converted")
    else:
        raise ConversionError(f"Resize mode {mode} is not converted")
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=tuple(_ints(sizes)[2:]), **kwargs)
    factors = [float(v) for v in scales.reshape(-1).tolist()][2:]
    return F.interpolate(x, scale_factor=tuple(factors), **kwargs)


def _pad(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x = args[0]
    pads = _ints(args[1]) if len(args) > 1 else list(a.get("pads", []))
    value = float(args[2]) if len(args) > 2 and args[2] is not None and args[2].numel() else float(a.get("value", 0.0))
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(x.dim()))
    axes = [ax % x.dim() for ax in axes]
    n = len(axes)
    begin, end = [0] * x.dim(), [0] * x.dim()
    for ax, b, e in zip(axes, pads[:n], pads[n:], strict=True):
        begin[ax], end[ax] = b, e
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(a.get("mode", "constant"))
    if mode is None:
        raise ConversionError(f"Pad mode {a.get('mode')} is not converted")
    if mode != "constant":
        begin, end = begin[2:], end[2:]
        return F.pad(x, _torch_pad(begin, end), mode=mode)
    return F.pad(x, _torch_pad(begin, end), value=value)


def _slice(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    backwards: list[tuple[int, int, int, int]] = []
    for ax, s, e, st in zip(axes, starts, ends, steps, strict=True):
        if st == 0:
            raise CorruptCheckpointError("Slice with a step of 0")
        if st > 0:
            index[ax % x.dim()] = slice(s, min(e, _INT64_MAX), st)
        else:
            backwards.append((ax % x.dim(), s, e, st))
    x = x[tuple(index)]
    for ax, s, e, st in backwards:  # ONNX's clamping rules for a negative step, as an index list
        n = x.shape[ax]
        s = min(max(s + n if s < 0 else s, 0), n - 1)
        e = -1 if e < -n else min(e + n if e < 0 else e, n - 1)
        x = x.index_select(ax, torch.arange(s, e, st, device=x.device))
    return x


def _reshape(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x, shape = args[0], _ints(args[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _axes(a: dict, args: list) -> list[int]:
    return _ints(args[1]) if len(args) > 1 and args[1] is not None else list(a.get("axes", []))


def _unsqueeze(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x = args[0]
    axes = sorted(ax % (x.dim() + len(_axes(a, args))) for ax in _axes(a, args))
    for ax in axes:
        x = x.unsqueeze(ax)
    return x


def _squeeze(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x = args[0]
    axes = _axes(a, args)
    if not axes:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _gather(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x, idx = args[0], args[1].long()
    axis = int(a.get("axis", 0)) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def _constant(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    if "value" in a:
        return a["value"]
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                        ("value_ints", torch.int64)):
        if name in a:
            return torch.tensor(a[name], dtype=dtype)
    raise ConversionError("Constant without a numeric value is not converted")


def _div(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x, y = args
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _clip(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    low = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
    return torch.clamp(args[0], low, high)


def _softmax(log: bool) -> Callable[[OnnxNetwork, dict, list], torch.Tensor]:
    def run(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
        axis = int(a.get("axis", -1))
        return (F.log_softmax if log else F.softmax)(args[0], dim=axis)

    return run


def _reduce_mean(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    axes = _axes(a, args) or list(range(args[0].dim()))
    return args[0].mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))


def _flatten(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    x = args[0]
    axis = int(a.get("axis", 1)) % max(x.dim(), 1)
    return x.reshape(int(torch.tensor(x.shape[:axis]).prod()), -1)


MAX_COMPUTED_ELEMENTS = 1 << 31
"""Largest tensor a graph may ask for by shape (ConstantOfShape): a shape is data, and a file's data can lie."""


def _constant_of_shape(net: OnnxNetwork, a: dict, args: list) -> torch.Tensor:
    shape = _ints(args[0])
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_COMPUTED_ELEMENTS:
        raise ConversionError(
            f"ConstantOfShape asks for a tensor of shape {shape}, above {MAX_COMPUTED_ELEMENTS:,} elements"
        )
    value = a.get("value")
    fill = value.reshape(-1)[0].item() if value is not None else 0.0
    return torch.full(shape, fill, dtype=value.dtype if value is not None else torch.float32, device=args[0].device)


_FUNCTIONS: dict[str, Callable[[OnnxNetwork, dict, list], Any]] = {
    "Relu": lambda n, a, x: F.relu(x[0]),
    "LeakyRelu": lambda n, a, x: F.leaky_relu(x[0], float(a.get("alpha", 0.01))),
    "Elu": lambda n, a, x: F.elu(x[0], float(a.get("alpha", 1.0))),
    "Sigmoid": lambda n, a, x: torch.sigmoid(x[0]),
    "Tanh": lambda n, a, x: torch.tanh(x[0]),
    "Softmax": _softmax(False),
    "LogSoftmax": _softmax(True),
    "Clip": _clip,
    "Add": lambda n, a, x: x[0] + x[1],
    "Sub": lambda n, a, x: x[0] - x[1],
    "Mul": lambda n, a, x: x[0] * x[1],
    "Div": _div,
    "Sqrt": lambda n, a, x: torch.sqrt(x[0]),
    "Pow": lambda n, a, x: torch.pow(x[0], x[1]),
    "Neg": lambda n, a, x: -x[0],
    "Erf": lambda n, a, x: torch.erf(x[0]),
    "Floor": lambda n, a, x: torch.floor(x[0]),
    "Ceil": lambda n, a, x: torch.ceil(x[0]),
    "ReduceMean": _reduce_mean,
    "Concat": lambda n, a, x: torch.cat([t for t in x if t is not None], dim=int(a["axis"])),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda n, a, x: x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True),
    "Resize": _resize,
    "Pad": _pad,
    "Identity": lambda n, a, x: x[0],
    "Dropout": _dropout,
    "Flatten": _flatten,
    "Constant": _constant,
    "Shape": lambda n, a, x: torch.tensor(x[0].shape[a.get("start", 0) : a.get("end")], dtype=torch.int64),
    "Slice": _slice,
    "Reshape": _reshape,
    "Transpose": lambda n, a, x: x[0].permute(a.get("perm", list(range(x[0].dim()))[::-1])),
    "Cast": lambda n, a, x: x[0].to(_DTYPES.get(int(a["to"]), torch.float32)),
    "ConstantOfShape": _constant_of_shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
}


def _digest(spec: GraphSpec) -> str:
    """The graph's structure without its weights: two exports of one network with different weights share it."""
    h = hashlib.sha256()
    for step in spec.steps:
        h.update(repr((step.op, step.key, step.inputs, step.outputs, sorted(step.attrs.items(), key=str))).encode())
    h.update(repr(sorted(spec.shapes.items())).encode())
    h.update(repr(sorted(spec.affine.items())).encode())
    h.update(repr(spec.head).encode())  # the same graph with another head is another evaluation
    for name, value in sorted(spec.constants.items()):
        h.update(name.encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()[:8]


def with_head(spec: GraphSpec, prefixes: tuple[str, ...], family: str) -> GraphSpec:
    """The spec with the head a recognised family declares: the layers whose weight names start with its head
    prefixes (MedicalNet's whole ``conv_seg`` decoder, not only its last convolution), plus the resized ones."""
    head = sorted({key for key, name in spec.names.items() if name.startswith(prefixes)} | set(spec.resized))
    rule = f"{family}'s head ({', '.join(prefixes)}), found by the weight names the export kept"
    return dataclasses.replace(spec, head=head, head_rule=rule)


class HeadNameError(ConversionError):
    """The head a user named is no convolution of the graph, or one whose output never reaches the network's."""


MAX_NAMES_SHOWN = 40


def _convolution_names(spec: GraphSpec) -> dict[str, str]:
    """Every name a user may give a convolution by → its module key: the node's name, its weight's name with and
    without ``.weight`` (a PyTorch export keeps the state-dict names), the converted module's key."""
    found: dict[str, str] = {}
    for step in spec.steps:
        if step.op not in ("Conv", "ConvTranspose") or step.key is None:
            continue
        weight = spec.names.get(step.key, "")
        for name in (spec.node_names.get(step.key), weight, weight.removesuffix(".weight"), step.key):
            if name:
                found.setdefault(name, step.key)
    return found


def _after(spec: GraphSpec, key: str) -> tuple[set[str], bool]:
    """Keys of the layers computed from the output of layer ``key`` (itself included), and whether the network's
    output is among what it reaches."""
    reached: set[str] = set()
    carries: set[str] = set()
    for step in spec.steps:
        if step.key == key or any(name in carries for name in step.inputs):
            carries.update(step.outputs)
            if step.key is not None:
                reached.add(step.key)
    return reached, spec.outputs[0] in carries


def with_named_head(spec: GraphSpec, name: str) -> GraphSpec:
    """The spec with the head a user names: that convolution and every layer computed from its output (they are
    re-initialised and trained with it), plus the layers resized to the task's classes. Refused with the names
    the graph offers when ``name`` is none of its convolutions or does not lead to the output."""
    names = _convolution_names(spec)
    key = names.get(name)
    if key is None:
        offered = list(dict.fromkeys(spec.names.get(k, k).removesuffix(".weight") for k in names.values()))
        shown = ", ".join(offered[-MAX_NAMES_SHOWN:])
        more = f" (the last {MAX_NAMES_SHOWN} of {len(offered)})" if len(offered) > MAX_NAMES_SHOWN else ""
        raise HeadNameError(
            f"head {name!r} names no convolution of the graph; its convolutions by weight name, in graph order"
            f"{more}: {shown} "
            "(a node name, the weight's full name or the converted module's key are taken too)"
        )
    after, reaches = _after(spec, key)
    if not reaches:
        raise HeadNameError(f"head {name!r}: nothing computed from its output reaches the network's output")
    head = sorted(after | set(spec.resized))
    node = spec.node_names.get(key)
    rule = f"named by the user: {name!r}" + (f" (node {node})" if node and node != name else "") + (
        ", and the layers computed from its output"
    )
    return dataclasses.replace(spec, head=head, head_rule=rule)


def channels(spec: GraphSpec) -> dict[str, int]:
    """In and out channels of the converted network as stored: the first convolution's, the head's."""
    found: dict[str, int] = {}
    first = next((s for s in spec.steps if s.op == "Conv" and s.inputs[0] in spec.inputs[:1]), None)
    if first is not None:
        shape = spec.shapes[first.key]  # type: ignore[index]
        found["in_channels"] = shape[1] * int(first.attrs.get("group", 1))
    head = next((s for s in spec.steps if s.key in spec.resized and s.op in ("Conv", "ConvTranspose")), None)
    if head is not None:
        shape = spec.shapes[head.key]  # type: ignore[index]
        found["out_channels"] = shape[0] if head.op == "Conv" else shape[1] * int(head.attrs.get("group", 1))
    return found


def onnx_architecture(spec: GraphSpec) -> Architecture:
    """The graph as an architecture, named ``onnx:<digest of its structure>``: the candidate and its random-init
    control are built from it, the head being the module `structure` chose."""

    def build(in_channels: int | None = None, out_channels: int | None = None) -> nn.Module:
        return OnnxNetwork(spec, in_channels, out_channels)

    norms = spec.report()["norms"]
    described = ", ".join(f"{n} {op}" for op, n in norms.items()) or "no normalisation"
    return Architecture(
        name=f"onnx:{_digest(spec)}",
        description=f"an ONNX graph of {len(spec.steps)} nodes ({described})",
        build=build,
        head=tuple(f"layers.{key}." for key in spec.head),
        infer=lambda shapes: None,
    )


def read_candidate(path: Path, max_bytes: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An ONNX file's weights keyed by the converted network's modules, and the graph to build it from."""
    graph = read_onnx(path, max_bytes)
    try:
        spec, state = structure(graph)
    except CheckpointError as exc:
        raise type(exc)(f"{path.name}: {exc}") from exc
    source = {"conversion": spec.report(), "opset": graph.opset, "producer": graph.producer}
    return state, {"format": "onnx", "onnx": spec, "source": source}
