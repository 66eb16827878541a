"""Checking an uploaded checkpoint before any row refers to it.

All reading goes through the engine (`load_checkpoint` → `read_state_dict`), which only ever calls
``torch.load(weights_only=True)``: a pickle that would run code is refused unopened. The same call fits the
weights to the declared or recognised architecture, which is what produces the load report and the model
whose raw γ statistics are stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnrank.engine.checkpoints import load_checkpoint
from bnrank.engine.errors import BNRankError
from bnrank.engine.gamma import gamma_stats

log = logging.getLogger(__name__)


class CheckpointRejected(Exception):
    """The file cannot be used as a checkpoint; the message tells the uploader why."""


@dataclass
class CheckpointInfo:
    format: str
    architecture: str
    build_kwargs: dict[str, Any]
    n_parameters: int
    n_bn_channels: int
    load_report: dict[str, Any]
    gamma: dict[str, Any]


def inspect_checkpoint(
    path: Path,
    *,
    architecture: str | None,
    network_def: dict[str, Any] | None,
    threshold: float,
    label: str,
) -> CheckpointInfo:
    """Load the checkpoint as the worker will, or raise CheckpointRejected with the reason."""
    try:
        model, report = load_checkpoint(path, architecture=architecture, network_def=network_def)
    except BNRankError as exc:
        raise CheckpointRejected(f"{label}: {str(exc).replace(path.name + ': ', '')}") from exc
    except Exception as exc:
        # A stranger's file can trip anything in a network constructor; it is still a bad file, not a 500.
        log.warning("checkpoint %s could not be loaded", label, exc_info=True)
        raise CheckpointRejected(f"{label}: cannot be loaded as a checkpoint ({type(exc).__name__}: {exc})") from exc
    gamma = gamma_stats(model, threshold=threshold)
    return CheckpointInfo(
        format=report.format,
        architecture=report.architecture,
        build_kwargs=dict(report.build_kwargs),
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_bn_channels=int(gamma["summary"].get("count", 0)),
        load_report=report.to_dict(),
        gamma=gamma,
    )
