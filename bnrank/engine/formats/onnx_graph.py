"""ONNX models, read as data and judged before anything is built from them.

An ONNX file is a protobuf: a graph of operator nodes, its initializers (the weights) and an op-set version.
Nothing in it runs by itself, but a converter builds and runs whatever the graph names, so the graph is judged
first, against what BNRank knows how to convert:

- the operators, by name, against `ALLOWED_OPS` (the default domain only: no custom domains, no model-local
  functions, no node with a subgraph attribute such as ``If``/``Loop``);
- every initializer's declared size against the bytes that back it (a 10¹² -element initializer stored in a
  few bytes is a lie) and all of them together against ``max_bytes``, before any is turned into a tensor;
- external data (``data_location: EXTERNAL``, a path the file names) is refused: an upload is one file, and
  following a path the file chooses would read the host's files;
- `onnx.checker` on the rest (names defined before use, attribute types, the op set).

The file is parsed as it is, never following external data. What comes out is an
`OnnxGraph`: the nodes with their attributes as Python values, the initializers as tensors, the inputs and
outputs. `bnrank.engine.formats.onnx_network` turns it into a PyTorch module.
"""

from __future__ import annotations

import math
import mmap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnrank.engine.errors import CheckpointTooLargeError, CorruptCheckpointError, UnsafeCheckpointError

# What each allowed operator is for; anything else is refused by name before a module is built. The set is what
# exports of the registered architectures, nnU-Net networks and MONAI's common nets contain (PyTorch's exporter,
# op sets 13-21): convolutions, normalisations, activations, pooling, resizing, and the shape arithmetic that
# exports with dynamic spatial axes compute (Shape, Slice, Concat, ... on int64 tensors).
ALLOWED_OPS: dict[str, str] = {
    # with weights
    "Conv": "convolution", "ConvTranspose": "transposed convolution",
    "BatchNormalization": "normalisation", "InstanceNormalization": "normalisation", "PRelu": "activation",
    # activations and arithmetic
    "Relu": "activation", "LeakyRelu": "activation", "Elu": "activation", "Sigmoid": "activation",
    "Tanh": "activation", "Softmax": "activation", "LogSoftmax": "activation", "Clip": "activation",
    "Add": "arithmetic", "Sub": "arithmetic", "Mul": "arithmetic", "Div": "arithmetic", "Sqrt": "arithmetic",
    "Pow": "arithmetic", "Neg": "arithmetic", "Erf": "arithmetic", "ReduceMean": "arithmetic",
    # structure
    "Concat": "structure", "MaxPool": "pooling", "AveragePool": "pooling", "GlobalAveragePool": "pooling",
    "Resize": "resizing", "Pad": "padding", "Identity": "structure",
    "Dropout": "structure", "Flatten": "structure",
    # shape arithmetic (dynamic spatial axes)
    "Constant": "shape", "Shape": "shape", "Slice": "shape", "Reshape": "shape", "Transpose": "shape",
    "Cast": "shape", "ConstantOfShape": "shape", "Gather": "shape", "Unsqueeze": "shape", "Squeeze": "shape",
    "Floor": "shape", "Ceil": "shape",
}
MAX_NODES = 50_000
MAX_INITIALIZERS = 50_000
# The op sets whose semantics the converter follows (PyTorch's exporters write 13-21).
MIN_OPSET, MAX_OPSET = 11, 23
ONNX_MAGIC_TAGS = (0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42)  # fields after ir_version in a ModelProto


@dataclass
class OnnxNode:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


@dataclass
class OnnxGraph:
    """A checked ONNX graph: nodes in topological order, initializers as tensors, its op set."""

    nodes: list[OnnxNode]
    initializers: dict[str, torch.Tensor]
    inputs: list[str]
    outputs: list[str]
    opset: int
    producer: str = ""
    ops: dict[str, int] = field(default_factory=dict)


def looks_like_onnx(head: bytes) -> bool:
    """A ModelProto starts with ir_version (field 1, varint: byte 0x08, a small version) and another field.

    Only a hint from the first bytes; the parse decides.
    """
    return len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 20 and head[2] in ONNX_MAGIC_TAGS


def _size(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _attr(attribute: Any, label: str) -> Any:
    from onnx import AttributeProto, helper

    if attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise UnsafeCheckpointError(
            f"{label}: node attribute {attribute.name!r} holds a subgraph; BNRank converts flat graphs only"
        )
    if attribute.type == AttributeProto.TENSOR:
        return torch.from_numpy(np.array(stored_array(_checked_tensor(attribute.t, label, 1 << 26), label)))
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _checked_tensor(tensor: Any, label: str, max_bytes: int) -> Any:
    """Refuse a tensor whose data lies outside the file or whose declared size is above ``max_bytes`` (before its
    bytes are touched: `stored_array` compares them with the declared size when it is read)."""
    from onnx import TensorProto, helper

    name = tensor.name or "(a constant)"
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise UnsafeCheckpointError(
            f"{label}: initializer {name!r} keeps its data in an external file ({where!r}); BNRank reads a "
            "single self-contained .onnx file and never follows paths a file names. Export with "
            "external_data=False (models under 2 GiB)"
        )
    if any(d < 0 for d in tensor.dims):
        raise CorruptCheckpointError(f"{label}: initializer {name!r} has a negative dimension {list(tensor.dims)}")
    numel = math.prod(tensor.dims)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        raise CorruptCheckpointError(
            f"{label}: initializer {name!r} has an unknown data type {tensor.data_type}"
        ) from None
    if tensor.data_type == TensorProto.STRING:
        raise CorruptCheckpointError(f"{label}: initializer {name!r} holds strings, not numbers")
    declared = numel * itemsize
    if declared > max_bytes:
        raise CheckpointTooLargeError(
            f"{label}: initializer {name!r} declares {numel:,} elements ({_size(declared)}), above the "
            f"{_size(max_bytes)} limit"
        )
    return tensor


def _without_weights(model: Any) -> Any:
    """The model for `onnx.checker`: its nodes, with each initializer declared as a typed graph input instead of
    carried. The checker serialises what it is given, and on a 30 M-parameter model the weights were most of its
    time; their sizes are judged above, the checker's business is the graph (operators, attributes, names)."""
    from onnx import helper

    graph = model.graph
    declared = {i.name for i in graph.input}
    weights = [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in graph.initializer
        if t.name not in declared
    ]
    light = helper.make_graph(
        list(graph.node), graph.name or "graph", [*graph.input, *weights], list(graph.output),
        value_info=list(graph.value_info),
    )
    return helper.make_model(light, ir_version=model.ir_version, opset_imports=list(model.opset_import))


def stored_array(tensor: Any, label: str) -> np.ndarray:
    """An initializer's values, after checking its stored bytes hold exactly what its dimensions declare.

    ``raw_data`` is read once (each read of a protobuf bytes field is a copy) and viewed, not copied again."""
    from onnx import helper, numpy_helper

    name = tensor.name or "(a constant)"
    numel = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        raw = tensor.raw_data
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        if len(raw) != numel * dtype.itemsize:
            raise CorruptCheckpointError(
                f"{label}: initializer {name!r} declares {numel:,} elements ({numel * dtype.itemsize:,} bytes) but "
                f"stores {len(raw):,}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.dims))
    typed = max(
        len(tensor.float_data), len(tensor.int32_data), len(tensor.int64_data), len(tensor.double_data),
        len(tensor.uint64_data),
    )
    if typed != numel:
        raise CorruptCheckpointError(f"{label}: initializer {name!r} declares {numel:,} elements but stores {typed:,}")
    return numpy_helper.to_array(tensor)


def check_model(model: Any, label: str, max_bytes: int) -> dict[str, int]:
    """Refuse what the converter does not know or what would cost more than `max_bytes`; return op counts."""
    import onnx
    from onnx import helper

    if len(model.functions):
        names = ", ".join(f.name for f in model.functions[:3])
        raise UnsafeCheckpointError(
            f"{label}: the model defines its own functions ({names}); BNRank converts plain graphs"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    others = [o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")]
    if others:
        raise UnsafeCheckpointError(
            f"{label}: the model uses operator domains other than ONNX's own ({', '.join(others)}); "
            "custom operators are not converted"
        )
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise CorruptCheckpointError(
            f"{label}: op set {opset} is outside the versions BNRank converts ({MIN_OPSET}-{MAX_OPSET}); "
            "export with opset_version=17"
        )
    graph = model.graph
    if len(graph.node) > MAX_NODES or len(graph.initializer) > MAX_INITIALIZERS:
        raise CheckpointTooLargeError(
            f"{label}: the graph has {len(graph.node):,} nodes and {len(graph.initializer):,} initializers, more "
            f"than the {MAX_NODES:,} / {MAX_INITIALIZERS:,} allowed"
        )
    if len(graph.sparse_initializer):
        raise CorruptCheckpointError(f"{label}: sparse initializers are not supported")
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    unknown = sorted(op for op in counts if op not in ALLOWED_OPS)
    foreign = sorted({n.domain for n in graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise UnsafeCheckpointError(f"{label}: nodes of operator domains {', '.join(foreign)}; not converted")
    if unknown:
        raise UnsafeCheckpointError(
            f"{label}: the graph uses operators BNRank does not convert: {', '.join(unknown)} "
            f"(allowed: convolutions, normalisations, activations, pooling, resizing and shape arithmetic; "
            f"{len(ALLOWED_OPS)} operators)"
        )
    total = 0  # declared sizes; the stored bytes are compared with them as each initializer is read
    for tensor in graph.initializer:
        _checked_tensor(tensor, label, max_bytes)
        total += math.prod(tensor.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    if total > max_bytes:
        raise CheckpointTooLargeError(
            f"{label}: the initializers add up to {_size(total)}, above the {_size(max_bytes)} limit"
        )
    try:
        onnx.checker.check_model(_without_weights(model))
    except onnx.checker.ValidationError as exc:
        raise CorruptCheckpointError(f"{label}: not a valid ONNX model ({str(exc).splitlines()[0][:200]})") from exc
    return counts


def read_onnx(path: Path, max_bytes: int) -> OnnxGraph:
    """Parse and check an ONNX file; the initializers come back as tensors, nothing is built or run."""
    import onnx
    from google.protobuf.message import DecodeError

    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointTooLargeError(f"{path.name}: the file is {_size(size)}, above the {_size(max_bytes)} limit")
    try:  # parsed straight from a read-only map of the file: one copy of the weights less than onnx.load
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            model = onnx.ModelProto()
            model.ParseFromString(memoryview(mapped))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise CorruptCheckpointError(f"{path.name}: not a readable ONNX model ({str(exc)[:200]})") from exc
    label = path.name
    counts = check_model(model, label, max_bytes)
    graph = model.graph
    nodes = [
        OnnxNode(n.op_type, n.name, list(n.input), list(n.output), {a.name: _attr(a, label) for a in n.attribute})
        for n in graph.node
    ]
    initializers: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():  # read-only views over the parsed bytes: copied into the network, never written
        warnings.simplefilter("ignore", UserWarning)
        for tensor in graph.initializer:
            initializers[tensor.name] = torch.from_numpy(stored_array(tensor, label))
    inputs = [i.name for i in graph.input if i.name not in initializers]  # older exporters list weights too
    outputs = [o.name for o in graph.output]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    del model, graph  # the protobuf copy of the weights goes before the network is built
    return OnnxGraph(
        nodes=nodes,
        initializers=initializers,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        producer=producer,
        ops=counts,
    )
