"""Which architecture a checkpoint's tensors belong to, and with which build options.

Given by the caller, described by the file itself (nnU-Net plans, a bundle's ``network_def``), or recognised
from the tensors' key/shape signature among the registered architectures; a file matching none is refused
with the families it is closest to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bnrank.engine import families
from bnrank.engine.architectures import (
    ARCHITECTURES,
    Architecture,
    architecture_from_network_def,
    get_architecture,
)
from bnrank.engine.architectures.registry import probe_shapes
from bnrank.engine.architectures.sizing import DEFAULT_MAX_PARAMETERS
from bnrank.engine.errors import ArchitectureMismatchError, UnknownArchitectureError
from bnrank.engine.formats import onnx_network


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


def architecture_for(
    path: Path,
    state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    architecture: str | Architecture | None,
    network_def: Mapping[str, Any] | None,
    max_parameters: int,
    head: str | None = None,
) -> tuple[Architecture, dict[str, Any]]:
    """The architecture and build options: from the file's own description where it has one, else resolved.

    ``head`` names the convolution a converted graph's head starts at (`onnx_network.with_named_head`); a
    network BNRank rebuilds itself has its head declared by its architecture, so naming one there is refused."""
    if meta.get("onnx") is not None:
        return _graph_architecture(meta, head)
    found = _rebuilt_architecture(path, state, meta, architecture, network_def, max_parameters)
    if head is not None:  # after resolving: an archive BNRank cannot rebuild goes to the sandbox, head and all
        raise ArchitectureMismatchError(
            f"{path.name}: a head is named ({head!r}), but only a converted graph (ONNX, or TorchScript through the "
            f"sandbox) takes one; this {meta['format']} file's network has its head declared by its architecture"
        )
    return found


def _graph_architecture(meta: Mapping[str, Any], head: str | None) -> tuple[Architecture, dict[str, Any]]:
    """A converted graph's architecture, with the head named by the user, a recognised family's, or the graph's."""
    spec = meta["onnx"]
    try:  # an export of a registered network keeps its state-dict names: take that family's head
        family, _ = recognise(spec.weight_shapes)
    except UnknownArchitectureError:
        family = None
    if head is not None:
        spec = onnx_network.with_named_head(spec, head)
    elif family is not None and family.head:
        spec = onnx_network.with_head(spec, family.head, family.name)
    if spec is not meta["onnx"] and isinstance(meta.get("source"), dict):  # the report shows the head used
        meta["source"]["conversion"] = spec.report()
    arch = onnx_network.onnx_architecture(spec)
    return _DESCRIBED.setdefault(arch.name, arch), onnx_network.channels(meta["onnx"])


def _rebuilt_architecture(
    path: Path,
    state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    architecture: str | Architecture | None,
    network_def: Mapping[str, Any] | None,
    max_parameters: int,
) -> tuple[Architecture, dict[str, Any]]:
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
    if network_def is None and architecture is None and meta.get("network_def") is not None:
        bundle_def = meta["network_def"]
        kwargs = {k: bundle_def[k] for k in ("in_channels", "out_channels") if isinstance(bundle_def.get(k), int)}
        return described_architecture(bundle_def, max_parameters=max_parameters), kwargs
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return resolve_architecture(shapes, architecture, network_def, max_parameters=max_parameters)
