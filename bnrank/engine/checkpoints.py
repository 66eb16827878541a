"""Reading candidate checkpoints safely and fitting them to an architecture.

Checkpoints come from strangers. A PyTorch file is a pickle, and unpickling runs whatever code the file
names, so it is only ever read with ``torch.load(..., weights_only=True)``; a file that needs more is
refused as unsafe, never retried with a full unpickle. ``.safetensors`` files hold no code at all.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from bnrank.engine.architectures import (
    ARCHITECTURES,
    Architecture,
    architecture_from_network_def,
    get_architecture,
    head_keys,
)
from bnrank.engine.errors import (
    ArchitectureMismatchError,
    CorruptCheckpointError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
)

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "network_weights", "module")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
MIN_MATCH = 0.5


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
    """'safetensors' or 'torch', from the bytes rather than the file name (uploads lose their names)."""
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CorruptCheckpointError(f"{path.name}: file is {len(head)} bytes long, too short for a checkpoint")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive, or a legacy pickle
        return "torch"
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 0 < header_len < 100_000_000:
        return "safetensors"
    raise CorruptCheckpointError(
        f"{path.name}: neither a .safetensors file nor a PyTorch checkpoint (first bytes {head[:8]!r})"
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


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UnsafeCheckpointError(
                f"{path.name}: refused, the file needs code execution to load (it is not plain tensors). "
                "Save weights with safetensors or torch.save(model.state_dict()) and upload that."
            ) from exc
        raise CorruptCheckpointError(f"{path.name}: not a readable PyTorch checkpoint ({text[:200]})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
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


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a checkpoint file plus how they were found (format, container, stripped prefixes)."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpointError(f"{path}: no such file")
    fmt = sniff_format(path)
    raw = _read_safetensors(path) if fmt == "safetensors" else _read_torch(path)
    try:
        state, container, stripped = unwrap(raw)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f"{path.name}: {exc}") from exc
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CorruptCheckpointError(
            f"{path.name}: {len(bad)} tensor(s) contain NaN or Inf, e.g. {', '.join(bad[:3])}; "
            "these weights cannot be evaluated"
        )
    return state, {"format": fmt, "container": container, "stripped_prefixes": stripped}


# --------------------------------------------------------------------------------------- architectures


def recognise(shapes: Mapping[str, tuple[int, ...]]) -> tuple[Architecture, dict[str, Any]]:
    """The registered architecture whose key/shape signature the checkpoint has."""
    for arch in ARCHITECTURES.values():
        kwargs = arch.infer(shapes)
        if kwargs is not None:
            return arch, kwargs
    sample = ", ".join(list(shapes)[:4])
    raise UnknownArchitectureError(
        f"the checkpoint's keys ({sample}, ...) match no registered architecture "
        f"({', '.join(ARCHITECTURES)}); pass the architecture explicitly or a MONAI network definition"
    )


def resolve_architecture(
    shapes: Mapping[str, tuple[int, ...]],
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
) -> tuple[Architecture, dict[str, Any]]:
    """Pick the architecture (given, from a network definition, or recognised) and its build options."""
    if network_def is not None:
        return architecture_from_network_def(dict(network_def)), {}
    if architecture is None:
        return recognise(shapes)
    arch = architecture if isinstance(architecture, Architecture) else get_architecture(architecture)
    return arch, arch.infer(shapes) or {}


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
) -> tuple[nn.Module, LoadReport]:
    """Build the checkpoint's architecture for a task with ``out_channels`` classes and load the weights.

    Without ``out_channels`` the head keeps the checkpoint's own class count (for inspection).
    """
    state, meta = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    arch, kwargs = resolve_architecture(shapes, architecture, network_def)
    kwargs = dict(kwargs)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    if out_channels is not None:
        kwargs["out_channels"] = out_channels
    kwargs.setdefault("out_channels", 2)
    model = arch.build(**kwargs)
    report = LoadReport(
        architecture=arch.name,
        build_kwargs=kwargs,
        format=meta["format"],
        container=meta["container"],
        stripped_prefixes=meta["stripped_prefixes"],
    )
    fit_state_dict(model, arch, state, report, min_match=min_match)
    return model, report


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
