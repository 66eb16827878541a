"""Alchemy from a checkpoint file to a weights file (and its JSON report).

The starting network is loaded (or, for ``scratch``, built from the seed in the checkpoint's architecture)
for the target task, :func:`~bnrank.engine.alchemy.run.run_alchemy` trains it, and the result is written
only once every step has succeeded: weights atomically as .safetensors with the run's metadata, reports
atomically as JSON, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnrank.engine.alchemy.run import AlchemyResult, Phases, run_alchemy
from bnrank.engine.architectures import Architecture
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.alchemy import AlchemyConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.recognition import resolve_architecture
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn


def prepare_model(
    checkpoint: str | Path,
    data: TaskData,
    mode: str,
    seed: int,
    *,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    head: str | None = None,
) -> tuple[nn.Module, Architecture, dict[str, Any]]:
    """The starting network: the checkpoint loaded for ``data``, or (scratch) its architecture freshly
    built from ``seed``; the checkpoint then only fixes the architecture and its build options."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, report = load_checkpoint(
            checkpoint,
            out_channels=data.n_classes,
            in_channels=data.in_channels,
            architecture=architecture,
            network_def=network_def,
            head=head,
        )
    arch, _ = resolve_architecture({}, report.architecture if network_def is None else None, network_def)
    if mode == "scratch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = arch.build(**report.build_kwargs)
    return model, arch, report.to_dict()


def metadata(result: AlchemyResult) -> dict[str, Any]:
    """How saved weights were made, kept in their safetensors header: mode, source, dataset, Dice, options."""
    return {
        "bnrank": "alchemy",
        "mode": result.mode,
        "architecture": result.architecture,
        "build_kwargs": result.build_kwargs,
        "source_checkpoint": result.checkpoint,
        "dataset": result.dataset,
        "val_dice": result.score,
        "options": result.options,
    }


def alchemy_checkpoint(
    checkpoint: str | Path,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig | None = None,
    *,
    out: str | Path | None = None,
    architecture: str | Architecture | None = None,
    network_def: Mapping[str, Any] | None = None,
    head: str | None = None,
    dataset_name: str = "",
    on_progress: ProgressFn | None = None,
    _phases: Phases | None = None,
) -> tuple[AlchemyResult, nn.Module]:
    """Load, run the steps, and (with ``out``) save the fine-tuned weights atomically as .safetensors.

    Nothing is written unless every step succeeded.
    """
    options = options or AlchemyConfig()
    model, arch, report = prepare_model(
        checkpoint, data, options.mode, config.seed, architecture=architecture, network_def=network_def, head=head
    )
    result = run_alchemy(model, arch, data, config, options, on_progress=on_progress, _phases=_phases)
    result.architecture = arch.name
    result.build_kwargs = report["build_kwargs"]
    result.checkpoint = str(checkpoint)
    result.dataset = dataset_name
    if out is not None:
        result.weights = str(save_weights(model, out, metadata(result)))
    return result, model


def write_json(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
