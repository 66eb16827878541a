"""Reading a candidate checkpoint (file, model folder or zip) into tensors, safely; writing weights.

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

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file as save_safetensors
from torch import nn

from bnrank.engine.errors import CheckpointError, CheckpointTooLargeError, CorruptCheckpointError
from bnrank.engine.formats import bundle as bundle_format
from bnrank.engine.formats import nnunet as nnunet_format
from bnrank.engine.formats import onnx_graph, onnx_network
from bnrank.engine.formats import torchscript as torchscript_format
from bnrank.engine.formats.limits import DEFAULT_MAX_CHECKPOINT_BYTES, size_text
from bnrank.engine.formats.pickles import read_torch
from bnrank.engine.formats.safetensors_file import read_safetensors
from bnrank.engine.formats.zips import ModelTree, is_zip, open_folder, open_zip, read_json

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "network_weights", "module")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


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
                return read_safetensors(path)
            return read_torch(path, max_bytes)
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
                f"{path.name}: the file is {size_text(path.stat().st_size)}, above the {size_text(max_bytes)} limit"
            )
        return read_safetensors(path), {"format": fmt}
    if fmt == "onnx":
        return onnx_network.read_candidate(path, max_bytes)
    if is_zip(path):
        with open_zip(path, max_bytes=max_bytes) as tree:
            found = _read_tree(tree, max_bytes, zipped=True)
        if found is not None:
            return found
    raw = read_torch(path, max_bytes)
    if nnunet_format.is_nnunet_checkpoint(raw):
        return raw, _nnunet(raw, None, None, None, path.name)
    return raw, {"format": fmt}


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
            f"{path.name}: the tensors' shapes add up to {size_text(logical)}, above the {size_text(max_bytes)} limit"
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
