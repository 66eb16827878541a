"""Fitting a checkpoint's tensors to the network built for it, and the report of what matched.

`load_checkpoint` is the whole way from a file to a loaded network: read (`checkpoints.read_state_dict`),
recognise (`recognition.architecture_for`), size the build, fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnrank.engine import sandbox
from bnrank.engine.architectures import Architecture, head_keys
from bnrank.engine.architectures.registry import probe_shapes
from bnrank.engine.architectures.sizing import DEFAULT_MAX_PARAMETERS
from bnrank.engine.checkpoints import read_state_dict
from bnrank.engine.errors import ArchitectureMismatchError, CheckpointTooLargeError, UnknownArchitectureError
from bnrank.engine.formats.limits import DEFAULT_MAX_CHECKPOINT_BYTES
from bnrank.engine.recognition import architecture_for

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
    head: str | None = None,
) -> tuple[nn.Module, LoadReport]:
    """Build the checkpoint's architecture for a task with ``out_channels`` classes and load the weights.

    Without ``out_channels`` the head keeps the checkpoint's own class count (for inspection). ``head`` names
    the convolution a converted graph's head starts at (default: the one feeding the output).
    ``max_bytes`` bounds reading the file, ``max_parameters`` the network built for it (checked before
    anything is allocated).
    """
    state, meta = read_state_dict(path, max_bytes=max_bytes)
    try:
        arch, kwargs = architecture_for(Path(path), state, meta, architecture, network_def, max_parameters, head)
    except UnknownArchitectureError:
        if meta["format"] != "torchscript" or not sandbox.enabled():
            raise
        # an architecture BNRank cannot rebuild: the archive's own program, run in the sandbox, exports it to ONNX
        converted = sandbox.converted_torchscript(Path(path), state)
        model, report = load_checkpoint(
            converted, out_channels=out_channels, in_channels=in_channels, min_match=min_match,
            max_bytes=max_bytes, max_parameters=max_parameters, head=head,
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


def remember_graph(path: str | Path, *, max_bytes: int | None = None, head: str | None = None) -> str:
    """Read a file whose network is its own graph (ONNX, or TorchScript through the sandbox) and remember the
    architecture by name, so a random-init control named after it can be built in this process; returns the name.

    A worker evaluating a control row has not necessarily read the candidate it stands for."""
    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    _, report = load_checkpoint(path, head=head, **kwargs)
    return report.architecture
