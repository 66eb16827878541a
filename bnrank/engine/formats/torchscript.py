"""TorchScript archives, read as data: the parameter tensors, never the program.

`torch.jit.load` compiles and runs the archive's `code/` (TorchScript can call registered operators, and a
crafted archive can name any of them), so it is never called on an uploaded file. An archive is a zip:
``<root>/data.pkl`` pickles the module tree (objects of classes named ``__torch__.…``, their attributes, and
tensors as ``torch._utils._rebuild_tensor_v2`` over persistent storage ids), ``<root>/data/<key>`` holds each
storage's raw bytes and ``<root>/code/`` the compiled program. Here data.pkl is unpickled by an unpickler
that knows a handful of names: every ``__torch__`` class becomes a `_ScriptObject` that only collects its
attributes, the tensor/storage names become local functions that record what to build, and any other name
(``os.system``, ``builtins.eval``, …) refuses the archive. Storages are then read from their entries with
their sizes checked, and the tensors are cut out of them with their views checked against the storage.
"""

from __future__ import annotations

import io
import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from bnrank.engine.errors import CorruptCheckpointError, UnsafeCheckpointError
from bnrank.engine.formats.zips import ModelTree

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
MAX_DEPTH = 100  # module nesting; real networks are < 15 deep


def root_of(names: list[str]) -> str | None:
    """The archive's root folder when it is a TorchScript archive (data.pkl plus code/ or constants.pkl)."""
    for name in names:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            root = name.split("/", 1)[0]
            if f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names):
                return root
    return None


class _ScriptObject:
    """Stands for an object of a TorchScript class: it keeps the attributes the pickle gives it, nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise CorruptCheckpointError("a tensor in data.pkl is not backed by a storage")
    try:
        return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    except (TypeError, ValueError) as exc:
        raise CorruptCheckpointError(f"a tensor in data.pkl has a malformed shape ({exc})") from exc


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _same(value: Any, *rest: Any) -> Any:
    """TorchScript's typed-container tags (restore_type_tag, build_intlist, …) change nothing we read."""
    return value


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _same,
    ("torch.jit._pickle", "build_intlist"): _same,
    ("torch.jit._pickle", "build_doublelist"): _same,
    ("torch.jit._pickle", "build_boollist"): _same,
    ("torch.jit._pickle", "build_tensorlist"): _same,
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Knows `__torch__` classes (as `_ScriptObject`), the tensor names above and storage types; nothing else."""

    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(io.BytesIO(data))
        self.label = label

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafeCheckpointError(
            f"{self.label}: refused, the TorchScript archive's data.pkl names {module}.{name}, which is not a "
            "tensor or module record; it is never imported or called"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptCheckpointError(f"{self.label}: data.pkl refers to an unknown record {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CorruptCheckpointError(f"{self.label}: data.pkl names a storage of unknown type")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise CorruptCheckpointError(f"{self.label}: storage {key!r} has a nonsensical size {numel!r}")
        return _StorageRef(str(key), storage_type.dtype, numel)


def _collect(obj: _ScriptObject, prefix: str, out: dict[str, _TensorRef], seen: set[int], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CorruptCheckpointError(f"the module tree nests deeper than {MAX_DEPTH}")
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for key, value in obj.state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, _TensorRef):
            out[prefix + key] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{key}.", out, seen, depth + 1)


def _materialise(tree: ModelTree, root: str, refs: dict[str, _TensorRef]) -> dict[str, torch.Tensor]:
    storages: dict[str, torch.Tensor] = {}
    total = 0
    for ref in refs.values():
        storage = ref.storage
        if storage.key in storages:
            continue
        member = f"{root}/data/{storage.key}"
        nbytes = storage.numel * torch.empty((), dtype=storage.dtype).element_size()
        declared = tree.members.get(member)
        if declared is None or declared.size != nbytes:
            got = "missing" if declared is None else f"{declared.size:,} bytes"
            raise CorruptCheckpointError(
                f"{tree.label}: storage {storage.key} should hold {nbytes:,} bytes, found {got}"
            )
        total += nbytes
        if total > tree.max_bytes:
            raise CorruptCheckpointError(f"{tree.label}: the tensors add up to more than the size limit")
        raw = tree.read_array(member)
        storages[storage.key] = (
            torch.frombuffer(raw, dtype=storage.dtype) if raw else torch.empty(0, dtype=storage.dtype)
        )
    state: dict[str, torch.Tensor] = {}
    for key, ref in refs.items():
        base = storages[ref.storage.key]
        if len(ref.size) != len(ref.stride) or ref.offset < 0 or any(v < 0 for v in (*ref.size, *ref.stride)):
            raise CorruptCheckpointError(f"{tree.label}: tensor {key} has an invalid view")
        if math.prod(ref.size):
            last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride, strict=True))
            if last >= base.numel():
                raise CorruptCheckpointError(f"{tree.label}: tensor {key} reaches past its storage")
        view = torch.as_strided(base, ref.size, ref.stride, ref.offset)
        whole = ref.offset == 0 and view.is_contiguous() and view.numel() == base.numel()
        state[key] = view if whole else view.clone()  # the usual case shares the storage read, no copy
    return state


def read_torchscript(tree: ModelTree, root: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the archive's module tree, keyed as its `state_dict()` would be."""
    order = f"{root}/byteorder"
    if order in tree.members and tree.read(order).strip() not in (b"little", b""):
        raise CorruptCheckpointError(f"{tree.label}: big-endian TorchScript archives are not supported")
    data = tree.read(f"{root}/data.pkl")
    try:
        top = _ArchiveUnpickler(data, tree.label).load()
    except (UnsafeCheckpointError, CorruptCheckpointError):
        raise
    except Exception as exc:  # a malformed pickle: the unpickler found no allowed way through it
        raise CorruptCheckpointError(f"{tree.label}: the TorchScript archive's data.pkl is unreadable ({exc})") from exc
    if not isinstance(top, _ScriptObject):
        raise CorruptCheckpointError(f"{tree.label}: data.pkl does not hold a TorchScript module")
    refs: dict[str, _TensorRef] = {}
    _collect(top, "", refs, set(), 0)
    if not refs:
        raise CorruptCheckpointError(f"{tree.label}: the TorchScript module holds no tensors")
    return _materialise(tree, root, refs)
