"""Reading candidate checkpoints safely and fitting them to an architecture.

Checkpoints come from strangers. A PyTorch file is a pickle, and unpickling runs whatever code the file
names, so it is only ever read with ``torch.load(..., weights_only=True)``; a file that needs more is
refused as unsafe, never retried with a full unpickle. ``.safetensors`` files hold no code at all.

Safe to unpickle is not yet safe to open: a 1 MB zip can inflate to gigabytes, a legacy pickle can declare a
storage of 10¹² elements, and a tensor can claim a huge shape over one stored number (stride 0). So every
size is bounded by `max_bytes` before the allocation it would cause: the zip's central directory before
`torch.load`, a legacy file's declared storages by a scan that builds nothing, and the tensors' total size
before anything is computed on them. The service passes its upload limit; the default suits a CLI user.

Besides plain state dicts (``torch.save``, ``.safetensors``) the formats people share are recognised from
their contents (`read_state_dict` dispatches to `bnrank.engine.formats`): an nnU-Net v2 model folder, its
zip or a bare ``checkpoint_final.pth``; a MONAI bundle folder or zip; a TorchScript archive. Each is read
without running code from it, and the ones that describe their own network (nnU-Net plans, a bundle's
``network_def``) are built from that description, through allow-lists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from bnrank.engine import families, sandbox
from bnrank.engine.architectures import (
    ARCHITECTURES,
    Architecture,
    architecture_from_network_def,
    get_architecture,
    head_keys,
)
from bnrank.engine.architectures.registry import probe_shapes
from bnrank.engine.architectures.sizing import DEFAULT_MAX_PARAMETERS
from bnrank.engine.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointTooLargeError,
    CorruptCheckpointError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
)
from bnrank.engine.formats import bundle as bundle_format
from bnrank.engine.formats import nnunet as nnunet_format
from bnrank.engine.formats import onnx_graph, onnx_network
from bnrank.engine.formats import torchscript as torchscript_format
from bnrank.engine.formats.zips import ModelTree, declared_entry_count, is_zip, open_folder, open_zip, read_json

try:  # numpy >= 2 moved it; pickles written under numpy 1 still name numpy.core
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "network_weights", "module")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
MIN_MATCH = 0.5

MiB = 1024**2
GiB = 1024**3
# Largest decompressed checkpoint read by default: SwinUNETR-sized networks are a few hundred MB in fp32.
DEFAULT_MAX_CHECKPOINT_BYTES = 2 * GiB
# torch.save stores zip entries uncompressed (ratio ≤ 1), so a high inflation ratio means a crafted file.
# Below the floor a high ratio is harmless (it cannot cost more than the floor) and is not judged.
DEFAULT_MAX_ZIP_RATIO = 10.0
ZIP_RATIO_FLOOR = 16 * MiB
# One entry per storage plus a few bookkeeping records; real networks have hundreds to a few thousand.
DEFAULT_MAX_ZIP_ENTRIES = 65_536

# What `torch.load(weights_only=True)` may build beyond tensors and containers: numpy scalars, which training
# logs hold (nnU-Net v2's checkpoint_final.pth keeps its per-epoch losses and Dice as np.float64). A scalar is
# rebuilt from a dtype and its raw bytes, and only numeric dtypes are listed, so nothing here can run code or
# build an arbitrary object. Granted per call (`torch.serialization.safe_globals`), never registered globally.
NUMPY_SAFE_GLOBALS: list[Any] = [
    np.dtype,
    _np_scalar,
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    *(
        getattr(np.dtypes, name)
        for name in (
            "Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "Int16DType", "Int8DType",
            "UInt64DType", "UInt32DType", "UInt16DType", "UInt8DType", "BoolDType",
        )
        if hasattr(np.dtypes, name)
    ),
]
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class LoadReport:
    """What happened to every tensor of a checkpoint when it was fitted to an architecture."""

    architecture: str
    build_kwargs: dict[str, Any]
    format: str
    container: str | None = None
    stripped_prefixes: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[dict[str, Any]] = field(default_factory=list)
    head_reinitialised: list[str] = field(default_factory=list)
    matched_fraction: float = 0.0
    source: dict[str, Any] = field(default_factory=dict)
    """What the format told about the model: nnU-Net's configuration, chosen fold and data defaults (spacing,
    patch size, normalisation), a bundle's name, config and network_def, a TorchScript archive's root."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.architecture}: {len(self.matched)} tensors matched "
            f"({self.matched_fraction:.0%} of the non-head parameters), {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatched)} shape-mismatched, "
            f"head re-initialised: {len(self.head_reinitialised)}"
        )


# --------------------------------------------------------------------------------------------- reading


def sniff_format(path: Path) -> str:
    """'safetensors', 'onnx' or 'torch', from the bytes rather than the file name (uploads lose their names)."""
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CorruptCheckpointError(f"{path.name}: file is {len(head)} bytes long, too short for a checkpoint")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive, or a legacy pickle
        return "torch"
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 0 < header_len < 100_000_000:
        return "safetensors"
    if onnx_graph.looks_like_onnx(head):
        return "onnx"
    raise CorruptCheckpointError(
        f"{path.name}: neither a .safetensors file, an ONNX model nor a PyTorch checkpoint (first bytes {head[:8]!r})"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise CorruptCheckpointError(
                f"{path.name}: safetensors header claims {header_len} bytes but the file has {size - 8}"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptCheckpointError(f"{path.name}: safetensors header is not valid JSON ({exc})") from exc
    data_len = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not offsets or len(offsets) != 2 or offsets[1] > data_len or offsets[0] > offsets[1]:
            raise CorruptCheckpointError(
                f"{path.name}: tensor {key!r} points at bytes {offsets} but the data section has {data_len}"
            )
    try:
        return load_safetensors(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError) as exc:
        raise CorruptCheckpointError(f"{path.name}: unreadable safetensors file ({exc})") from exc


def _size(n: float) -> str:
    """Bytes for a message: the unit a person would use."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def check_torch_zip(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
    max_ratio: float = DEFAULT_MAX_ZIP_RATIO,
    max_entries: int = DEFAULT_MAX_ZIP_ENTRIES,
) -> int:
    """Refuse a PyTorch zip whose entries would inflate past the limits; return the decompressed total.

    Only the central directory is read (zipfile reads no member data for `infolist`). PyTorch's reader
    allocates each record at the size the directory declares and never decompresses past it, so the
    declared sizes bound what `torch.load` can allocate for the archive.
    """
    size = path.stat().st_size
    try:
        count = declared_entry_count(path)
        if count is not None and count > max_entries:
            raise CheckpointTooLargeError(
                f"{path.name}: the archive has {count:,} entries, more than the {max_entries:,} allowed"
            )
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise CorruptCheckpointError(f"{path.name}: truncated or corrupt PyTorch checkpoint ({exc})") from exc
    if len(entries) > max_entries:
        raise CheckpointTooLargeError(
            f"{path.name}: the archive has {len(entries):,} entries, more than the {max_entries:,} allowed"
        )
    total = sum(max(info.file_size, 0) for info in entries)
    if total > max_bytes:
        raise CheckpointTooLargeError(
            f"{path.name}: the archive decompresses to {_size(total)}, above the {_size(max_bytes)} limit"
        )
    if total > ZIP_RATIO_FLOOR and total > max_ratio * max(size, 1):
        raise CheckpointTooLargeError(
            f"{path.name}: the archive inflates {total / max(size, 1):,.0f}-fold ({_size(size)} to "
            f"{_size(total)}), more than the {max_ratio:g}-fold allowed; torch.save writes uncompressed "
            "archives, so this is not a plain checkpoint"
        )
    return total


# Bytes per element of the storage classes a legacy (pre-1.6) checkpoint names.
_LEGACY_ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1,
}


class _Placeholder:
    """Stands in for every object a legacy pickle builds while it is only being sized: it runs nothing."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _Global:
    """Stands in for every class or function a legacy pickle names; calling it builds a `_Placeholder`."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()


_SHORT_READ = 1 << 20  # over-reads up to this are the unpickler's business (EOF), not an allocation hazard


class _BoundedReader:
    """A file view that refuses any read past its end instead of allocating what the pickle asks for.

    A genuine pickle never asks for bytes it does not contain; a crafted one claiming a 100 GB string is
    answered with an error, not a 100 GB buffer.
    """

    def __init__(self, handle: Any, size: int, name: str) -> None:
        self._f, self._size, self._name = handle, size, name

    def _left(self) -> int:
        return self._size - self._f.tell()

    def read(self, n: int = -1) -> bytes:
        left = max(self._left(), 0)
        if n is None or n < 0:
            n = left
        if n > left and n > _SHORT_READ:  # a length field larger than the rest of the file: a lie
            raise CorruptCheckpointError(f"{self._name}: the pickle asks for {n:,} bytes but only {left:,} remain")
        return self._f.read(min(n, left))  # short reads (at the end) are left for the unpickler to judge

    def readline(self) -> bytes:
        return self._f.readline(max(self._left(), 0))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _SizingUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so every read goes through read()
    """Records the storages a legacy pickle declares; every name it imports becomes a harmless `_Global`."""

    def __init__(self, reader: _BoundedReader) -> None:
        super().__init__(reader)  # type: ignore[arg-type]
        self.storages: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        return _Global(name)

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            storage_type, key, numel = pid[1], str(pid[2]), pid[4]
            if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
                raise ValueError(f"storage {key} has a nonsensical size {numel!r}")
            name = storage_type.name if isinstance(storage_type, _Global) else ""
            nbytes = numel * _LEGACY_ELEMENT_SIZES.get(name, 16)
            self.storages[key] = max(self.storages.get(key, 0), nbytes)
        return _Placeholder()


def check_legacy_torch(path: Path, *, max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES) -> int:
    """Refuse a legacy (non-zip) PyTorch file whose declared storages exceed the file or `max_bytes`.

    `torch.load` allocates each storage at the element count the pickle states, before reading its bytes
    (untouched, such an allocation costs address space rather than RAM under Linux's default overcommit,
    but it is committed memory under strict overcommit and fails a process limited by RLIMIT_AS).
    This walks the same pickles (magic number, protocol, system info, the object, the storage keys) with an
    unpickler that builds nothing, sums the declared storage sizes and compares them with what the file
    can actually hold: every byte of a storage is stored after the pickles, so more is a lie. A walk that
    breaks off (a malformed or malicious pickle) still checks what was declared before the break, which is
    all `torch.load` could allocate before breaking at the same place; the verdict is then torch's.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointTooLargeError(f"{path.name}: the file is {_size(size)}, above the {_size(max_bytes)} limit")
    storages: dict[str, int] = {}
    try:
        with path.open("rb") as handle:
            reader = _BoundedReader(handle, size, path.name)
            for _ in range(5):
                unpickler = _SizingUnpickler(reader)
                try:
                    unpickler.load()
                finally:
                    storages.update(unpickler.storages)
    except CorruptCheckpointError:
        raise
    except Exception:  # torch.load gives the verdict on what cannot be walked (unsafe, corrupt)
        pass  # what was declared up to here is still checked: torch would allocate it before failing too
    declared = sum(storages.values())
    if declared > size:  # and so above max_bytes too, which the file is not
        raise CheckpointTooLargeError(
            f"{path.name}: the checkpoint declares {_size(declared)} of tensor data but the file is "
            f"{_size(size)}; it cannot hold them"
        )
    return declared


def _read_torch(path: Path, max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES) -> Any:
    with path.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        check_torch_zip(path, max_bytes=max_bytes)
    else:
        check_legacy_torch(path, max_bytes=max_bytes)
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            named = _UNSAFE_GLOBAL.search(text)
            what = f" (it names {named.group(1)})" if named else ""
            raise UnsafeCheckpointError(
                f"{path.name}: refused, the file needs code execution to load{what}; it is not plain tensors. "
                "Save weights with safetensors or torch.save(model.state_dict()) and upload that."
            ) from exc
        raise CorruptCheckpointError(f"{path.name}: not a readable PyTorch checkpoint ({text[:200]})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
        if "TorchScript" in str(exc):  # an archive the zip sniffing missed (it never reaches torch.jit.load)
            raise CorruptCheckpointError(
                f"{path.name}: a TorchScript archive without the usual layout (<root>/code/, <root>/data.pkl)"
            ) from exc
        if "can't allocate memory" in str(exc):  # torch's allocator failing is no verdict on the file
            raise MemoryError(str(exc).splitlines()[0][:200]) from exc
        raise CorruptCheckpointError(
            f"{path.name}: truncated or corrupt PyTorch checkpoint ({str(exc).splitlines()[0][:200]})"
        ) from exc


def unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """The state dict inside the usual containers, with DataParallel / torch.compile prefixes removed."""
    container = None
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        container = inner if container is None else f"{container}.{inner}"
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CorruptCheckpointError(f"expected a dict of tensors, found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CorruptCheckpointError("the file holds no tensors (looked inside " + ", ".join(CONTAINER_KEYS) + ")")
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, container, stripped


def _nested(tree: ModelTree, member: str, max_bytes: int) -> Any:
    """A checkpoint inside a model folder or zip, read as a standalone file would be (same checks)."""
    with tree.as_file(member) as path:
        try:
            if sniff_format(path) == "safetensors":
                return _read_safetensors(path)
            return _read_torch(path, max_bytes)
        except CheckpointError as exc:
            message = str(exc).replace(path.name, f"{tree.label}: {member}", 1)
            raise type(exc)(message) from exc


def _nnunet(raw: Any, plans: Any, dataset: Any, configuration: str | None, label: str) -> dict[str, Any]:
    """Meta of an nnU-Net checkpoint: the `nnunet` architecture's build options from the plans."""
    init_args = raw.get("init_args") if isinstance(raw, Mapping) else None
    if isinstance(init_args, Mapping):
        plans = plans if plans is not None else init_args.get("plans")
        dataset = dataset if dataset is not None else init_args.get("dataset_json")
        if isinstance(init_args.get("configuration"), str):
            configuration = init_args["configuration"]
    if not isinstance(plans, Mapping):
        raise CorruptCheckpointError(f"{label}: an nnU-Net checkpoint without plans")
    try:
        build, source = nnunet_format.describe(plans, dataset if isinstance(dataset, Mapping) else None, configuration)
    except CheckpointError as exc:
        raise type(exc)(f"{label}: {exc}") from exc
    if isinstance(raw, Mapping):
        source["trainer_name"] = raw.get("trainer_name")
        epoch = raw.get("current_epoch")
        source["epoch"] = int(epoch) if isinstance(epoch, (int, np.integer)) else None
    return {"format": "nnunet", "architecture": "nnunet", "build_kwargs": build, "source": source}


def _read_tree(tree: ModelTree, max_bytes: int, *, zipped: bool) -> tuple[Any, dict[str, Any]] | None:
    """A model folder's or zip's contents by format; None for a zip that is a plain torch.save archive."""
    names = tree.names()
    root = torchscript_format.root_of(names)
    if root is not None:
        return torchscript_format.read_torchscript(tree, root), {"format": "torchscript", "source": {"root": root}}
    layout = nnunet_format.find_layout(tree)
    if layout is not None:
        plans = read_json(tree, layout.plans)
        dataset = read_json(tree, layout.dataset)
        if layout.configuration is not None:  # refuse bad plans before reading the weights
            _nnunet({}, plans, dataset, layout.configuration, tree.label)
        raw = _nested(tree, layout.checkpoint, max_bytes)
        meta = _nnunet(raw, plans, dataset, layout.configuration, tree.label)
        meta["source"].update(checkpoint=layout.checkpoint, other_checkpoints=layout.other_checkpoints)
        return raw, meta
    bundle = bundle_format.find_layout(tree)
    if bundle is not None:
        network_def, source = bundle_format.describe(tree, bundle)
        raw = _nested(tree, bundle.weights, max_bytes)
        return raw, {"format": "monai_bundle", "network_def": network_def, "source": source}
    if zipped and any(n.endswith("data.pkl") for n in names):
        return None
    sample = ", ".join(names[:5]) or "nothing"
    kind = "zip archive" if zipped else "folder"
    raise CorruptCheckpointError(
        f"{tree.label}: a {kind} in none of the formats BNRank reads (an nnU-Net v2 model: plans.json, "
        "dataset.json, fold_N/checkpoint_final.pth; a MONAI bundle: configs/metadata.json, configs/inference.json, "
        f"models/model.pt; a TorchScript archive: code/ and data.pkl; a torch.save checkpoint); it holds {sample}"
    )


def _read_raw(path: Path, max_bytes: int) -> tuple[Any, dict[str, Any]]:
    """The loaded object of any supported format, plus what the format says about it."""
    if path.is_dir():
        with open_folder(path, max_bytes=max_bytes) as tree:
            found = _read_tree(tree, max_bytes, zipped=False)
        assert found is not None
        return found
    if not path.is_file():
        raise CorruptCheckpointError(f"{path.name}: no such file")
    fmt = sniff_format(path)
    if fmt == "safetensors":
        if path.stat().st_size > max_bytes:
            raise CheckpointTooLargeError(
                f"{path.name}: the file is {_size(path.stat().st_size)}, above the {_size(max_bytes)} limit"
            )
        return _read_safetensors(path), {"format": fmt}
    if fmt == "onnx":
        return onnx_candidate(path, max_bytes)
    if is_zip(path):
        with open_zip(path, max_bytes=max_bytes) as tree:
            found = _read_tree(tree, max_bytes, zipped=True)
        if found is not None:
            return found
    raw = _read_torch(path, max_bytes)
    if nnunet_format.is_nnunet_checkpoint(raw):
        return raw, _nnunet(raw, None, None, None, path.name)
    return raw, {"format": fmt}


def onnx_candidate(path: Path, max_bytes: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An ONNX file's weights keyed by the converted network's modules, and the graph to build it from."""
    graph = onnx_graph.read_onnx(path, max_bytes)
    try:
        spec, state = onnx_network.structure(graph)
    except CheckpointError as exc:
        raise type(exc)(f"{path.name}: {exc}") from exc
    source = {"conversion": spec.report(), "opset": graph.opset, "producer": graph.producer}
    return state, {"format": "onnx", "onnx": spec, "source": source}


def read_state_dict(
    path: str | Path, *, max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a checkpoint (file, model folder or zip) plus how they were found.

    The meta says the format, container and stripped prefixes, and for formats that describe their own
    network, how to build it: ``architecture`` + ``build_kwargs`` (nnU-Net) or ``network_def`` (a bundle),
    with ``source`` for the load report. `max_bytes` bounds what reading may allocate: the decompressed
    archive, and the tensors' total size.
    """
    path = Path(path)
    raw, found = _read_raw(path, max_bytes)
    try:
        state, container, stripped = unwrap(raw)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f"{path.name}: {exc}") from exc
    # A tensor may view one stored number with a huge shape (stride 0): cheap to load, but anything that
    # touches it (the finiteness check below, a model built to its shape) pays the full size.
    logical = sum(v.numel() * v.element_size() for v in state.values())
    if logical > max_bytes:
        raise CheckpointTooLargeError(
            f"{path.name}: the tensors' shapes add up to {_size(logical)}, above the {_size(max_bytes)} limit"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CorruptCheckpointError(
            f"{path.name}: {len(bad)} tensor(s) contain NaN or Inf, e.g. {', '.join(bad[:3])}; "
            "these weights cannot be evaluated"
        )
    meta = {
        "format": found["format"],
        "container": container,
        "stripped_prefixes": stripped,
        "architecture": found.get("architecture"),
        "build_kwargs": found.get("build_kwargs"),
        "network_def": found.get("network_def"),
        "onnx": found.get("onnx"),
        "source": found.get("source", {}),
    }
    return state, meta


# --------------------------------------------------------------------------------------- architectures


def closest_architectures(shapes: Mapping[str, tuple[int, ...]], n: int = 3) -> list[tuple[str, float]]:
    """Registered architectures ranked by how many of the checkpoint's key names their default build shares.

    Only names are compared (a narrower or wider build of the right family still shares them all), so the
    list tells a user which family their file is nearest to, and how near.
    """
    given = {k for k in shapes if not k.endswith("num_batches_tracked")}
    scored: list[tuple[str, float]] = []
    for arch in ARCHITECTURES.values():
        try:
            reference = {k for k in probe_shapes(arch.build) if not k.endswith("num_batches_tracked")}
        except Exception:  # an architecture that needs options to build (nnunet: its plans) is not compared
            continue
        union = given | reference
        scored.append((arch.name, len(given & reference) / len(union) if union else 0.0))
    scored.sort(key=lambda item: -item[1])
    return scored[:n]


def recognise(shapes: Mapping[str, tuple[int, ...]]) -> tuple[Architecture, dict[str, Any]]:
    """The registered architecture whose key/shape signature the checkpoint has."""
    for arch in ARCHITECTURES.values():
        kwargs = arch.infer(shapes)
        if kwargs is not None:
            return arch, kwargs
    raise UnknownArchitectureError(families.unrecognised(shapes, closest_architectures(shapes)))


# Architectures built from a description inside a file (a MONAI bundle's network_def), by name. A ranking
# builds a candidate and later, by name, its random-init control; the name carries a digest of the
# description, so two bundles of one class in different configurations never share an entry.
_DESCRIBED: dict[str, Architecture] = {}


def described_architecture(
    network_def: Mapping[str, Any], *, max_parameters: int = DEFAULT_MAX_PARAMETERS
) -> Architecture:
    """The architecture of a bundle's network_def, named `monai:<Class>@<digest>` and remembered by that name."""
    arch = architecture_from_network_def(dict(network_def), max_parameters=max_parameters)
    digest = hashlib.sha256(json.dumps(network_def, sort_keys=True, default=str).encode()).hexdigest()[:8]
    named = dataclasses.replace(arch, name=f"{arch.name}@{digest}")
    return _DESCRIBED.setdefault(named.name, named)


def resolve_architecture(
    shapes: Mapping[str, tuple[int, ...]],
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    *,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
) -> tuple[Architecture, dict[str, Any]]:
    """Pick the architecture (given, from a network definition, or recognised) and its build options."""
    if network_def is not None:
        return architecture_from_network_def(dict(network_def), max_parameters=max_parameters), {}
    if architecture is None:
        return recognise(shapes)
    if isinstance(architecture, str) and architecture in _DESCRIBED:
        return _DESCRIBED[architecture], {}
    arch = architecture if isinstance(architecture, Architecture) else get_architecture(architecture)
    return arch, arch.infer(shapes) or {}


def _described_channels(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """In/out channels of an nnU-Net network read off its weights: the first conv, and the seg layers."""
    found: dict[str, int] = {}
    first = next((v for v in state.values() if v.dim() == 5), None)
    if first is not None:
        found["in_channels"] = int(first.shape[1])
    head = state.get("decoder.seg_layers.0.weight")
    if head is not None and head.dim() == 5:
        found["out_channels"] = int(head.shape[0])
    return found


def _architecture_for(
    path: Path,
    state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    architecture: str | Architecture | None,
    network_def: Mapping[str, Any] | None,
    max_parameters: int,
) -> tuple[Architecture, dict[str, Any]]:
    """The architecture and build options: from the file's own description where it has one, else resolved."""
    described = meta.get("architecture")
    if described is not None:
        declared = architecture.name if isinstance(architecture, Architecture) else architecture
        if network_def is not None or declared not in (None, described):
            other = "a network_def" if network_def is not None else f"architecture {declared!r}"
            raise ArchitectureMismatchError(
                f"{path.name}: an {meta['format']} model builds its own network ({described}) from its plans; "
                f"{other} was declared for it. Upload it without one."
            )
        kwargs = {**meta["build_kwargs"], **_described_channels(state)}
        return get_architecture(described), kwargs
    if meta.get("onnx") is not None:
        arch = onnx_network.onnx_architecture(meta["onnx"])
        return _DESCRIBED.setdefault(arch.name, arch), onnx_network.channels(meta["onnx"])
    if network_def is None and architecture is None and meta.get("network_def") is not None:
        bundle_def = meta["network_def"]
        kwargs = {k: bundle_def[k] for k in ("in_channels", "out_channels") if isinstance(bundle_def.get(k), int)}
        return described_architecture(bundle_def, max_parameters=max_parameters), kwargs
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return resolve_architecture(shapes, architecture, network_def, max_parameters=max_parameters)


def _param_numel(model: nn.Module, keys: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[k].numel() for k in keys if k in params)


def fit_state_dict(
    model: nn.Module,
    arch: Architecture,
    state: Mapping[str, torch.Tensor],
    report: LoadReport,
    min_match: float = MIN_MATCH,
) -> LoadReport:
    """Copy every tensor whose key and shape agree; report the rest; refuse when too little matches."""
    model_state = model.state_dict()
    heads = set(head_keys(model, arch))
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in model_state:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(model_state[key].shape):
            if key in heads:
                report.head_reinitialised.append(key)
            else:
                report.shape_mismatched.append(
                    {"key": key, "checkpoint": list(tensor.shape), "model": list(model_state[key].shape)}
                )
        else:
            to_load[key] = tensor
            report.matched.append(key)
    report.missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    body = [k for k, _ in model.named_parameters() if k not in heads]
    matched_body = [k for k in report.matched if k not in heads]
    total = _param_numel(model, body)
    report.matched_fraction = _param_numel(model, matched_body) / total if total else 0.0
    if report.matched_fraction < min_match:
        problems = []
        if report.shape_mismatched:
            m = report.shape_mismatched[0]
            problems.append(
                f"e.g. {m['key']} is {tuple(m['checkpoint'])} in the file, {tuple(m['model'])} in the model"
            )
        if report.missing:
            problems.append(f"{len(report.missing)} keys missing, e.g. {report.missing[0]}")
        if report.unexpected:
            problems.append(f"{len(report.unexpected)} unexpected, e.g. {report.unexpected[0]}")
        raise ArchitectureMismatchError(
            f"checkpoint matches only {report.matched_fraction:.0%} of {arch.name}'s parameters "
            f"(at least {min_match:.0%} needed): " + "; ".join(problems),
            report=report,
        )
    with torch.no_grad():
        for key, tensor in to_load.items():
            model_state[key].copy_(tensor.to(model_state[key].dtype))
    return report


def load_checkpoint(
    path: str | Path,
    *,
    out_channels: int | None = None,
    in_channels: int | None = None,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    min_match: float = MIN_MATCH,
    max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
) -> tuple[nn.Module, LoadReport]:
    """Build the checkpoint's architecture for a task with ``out_channels`` classes and load the weights.

    Without ``out_channels`` the head keeps the checkpoint's own class count (for inspection).
    ``max_bytes`` bounds reading the file, ``max_parameters`` the network built for it (checked before
    anything is allocated).
    """
    state, meta = read_state_dict(path, max_bytes=max_bytes)
    try:
        arch, kwargs = _architecture_for(Path(path), state, meta, architecture, network_def, max_parameters)
    except UnknownArchitectureError:
        if meta["format"] != "torchscript" or not sandbox.enabled():
            raise
        # an architecture BNRank cannot rebuild: the archive's own program, run in the sandbox, exports it to ONNX
        converted = sandbox.converted_torchscript(Path(path), state)
        model, report = load_checkpoint(
            converted, out_channels=out_channels, in_channels=in_channels, min_match=min_match,
            max_bytes=max_bytes, max_parameters=max_parameters,
        )
        report.format = "torchscript"
        report.source["converted"] = "TorchScript archive exported to ONNX in the sandbox (BNRANK_SANDBOX)"
        return model, report
    kwargs = dict(kwargs)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    if out_channels is not None:
        kwargs["out_channels"] = out_channels
    kwargs.setdefault("out_channels", 2)
    if network_def is None and meta.get("network_def") is None:  # a network_def is sized inside its builder
        check_parameter_count(arch, kwargs, max_parameters)
    model = arch.build(**kwargs)
    report = LoadReport(
        architecture=arch.name,
        build_kwargs=kwargs,
        format=meta["format"],
        container=meta["container"],
        stripped_prefixes=meta["stripped_prefixes"],
        source=dict(meta.get("source") or {}),
    )
    fit_state_dict(model, arch, state, report, min_match=min_match)
    return model, report


def check_parameter_count(arch: Architecture, kwargs: Mapping[str, Any], max_parameters: int) -> int:
    """Count `arch.build(**kwargs)`'s parameters on the meta device (no memory) and refuse above the cap.

    Registered architectures take their width from the checkpoint's shapes, so this guards against a
    checkpoint crafted to make the real build enormous.
    """
    count = sum(math.prod(shape) for shape in probe_shapes(arch.build, **kwargs).values())
    if count > max_parameters:
        raise CheckpointTooLargeError(
            f"{arch.name} built for this checkpoint would have {count:,} parameters, "
            f"above the limit of {max_parameters:,}"
        )
    return count


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a model's weights as .safetensors, atomically: a crash never leaves half a file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (metadata or {}).items()}
    try:
        save_safetensors(state, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def all_finite(model: nn.Module) -> bool:
    return all(math.isfinite(float(p.detach().abs().sum())) for p in model.parameters())
