"""Norm-only (formerly BN-only) evaluation (thesis §3.2.1 and §4.4): how well a candidate's frozen kernels serve
a new task.

Everything is frozen except the normalisation layers' γ/β and the segmentation head. The thesis trains
BatchNorm's; here every kind counts (bnrank.engine.norms: BatchNorm, InstanceNorm, GroupNorm, LayerNorm), and
a normalisation without an affine gets an identity-initialised one inserted after it, after the weights are
loaded, for the evaluation only (the candidate's own tensors are untouched; :class:`TrainedNorms` says where).
BatchNorm keeps its running statistics (re-estimated in training, or by ``bn_recalibration``); the other kinds
have none to handle. The ``bn_only_*`` names stay as the same functions under their old names.

The head is re-initialised from the same seed for every candidate of an architecture: a pilot here that kept
one candidate's own head and gave another a random frozen one produced a ranking anti-correlated with fine-
tuning. With kernels frozen, all a candidate can do is rescale and shift the features it already has, so the
Dice it reaches measures those features, and its γ show how many of them the task uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bnrank.engine.architectures import Architecture, head_keys
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import TrainingError
from bnrank.engine.gamma import gamma_stats, gamma_values
from bnrank.engine.norms import has_norm, insert_affines, kinds_of, no_norm_message, norm_layers
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn, TrainResult, train


@dataclass
class TrainedNorms:
    """What norm-only evaluation trained: which kinds, how many parameters, and where affines were inserted."""

    kinds: list[str] = field(default_factory=list)
    """e.g. ``["batch"]``, ``["instance+affine-inserted"]``, ``["instance", "layer"]`` (norms.KINDS order)."""
    norm_parameters: int = 0
    """γ and β trained (inserted ones included)."""
    head_parameters: int = 0
    inserted_affines: list[str] = field(default_factory=list)
    """Module names of the normalisations an identity affine was inserted after (not in the checkpoint)."""

    @property
    def trained_parameters(self) -> int:
        return self.norm_parameters + self.head_parameters

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trained_parameters": self.trained_parameters}




def head_modules(model: nn.Module, arch: Architecture) -> list[tuple[str, nn.Module]]:
    """Modules owning the head's parameters, in a fixed (sorted) order so re-initialisation is reproducible;
    those the forward never runs (`Architecture.idle_head`) left out, so the head that computes the output is
    reset from the same point of the seed's stream as in an export of the network without them."""
    modules = dict(model.named_modules())
    idle = arch.idle_head(model) if arch.idle_head is not None else set()
    names = sorted({key.rsplit(".", 1)[0] for key in head_keys(model, arch)} - idle)
    return [(n, modules[n]) for n in names if n in modules]


def reinit_head(model: nn.Module, arch: Architecture, seed: int) -> None:
    """The same fresh head for every candidate: reset its modules from ``seed`` without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _, module in head_modules(model, arch):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()


def _trainable(model: nn.Module, arch: Architecture) -> tuple[list[nn.Parameter], TrainedNorms]:
    if not has_norm(model):
        hint = getattr(model, "no_norm_hint", "")  # a converted graph says why it has none (a folded export)
        raise TrainingError(no_norm_message(arch.name) + (f". {hint}" if hint else ""))
    inserted = insert_affines(model)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = list(norm_layers(model))
    norm: dict[int, nn.Parameter] = {}
    for layer in layers:
        for p in (layer.weight, layer.bias):
            if p is not None:
                norm[id(p)] = p
    head: dict[int, nn.Parameter] = {}
    for _, module in head_modules(model, arch):
        for p in module.parameters(recurse=False):
            if id(p) not in norm:
                head[id(p)] = p
    trainable = {**norm, **head}
    for p in trainable.values():
        p.requires_grad_(True)
    info = TrainedNorms(kinds_of(layers), count(norm.values()), count(head.values()), inserted)
    return list(trainable.values()), info


def norm_only_parameters(model: nn.Module, arch: Architecture) -> list[nn.Parameter]:
    """Freeze the model except normalisation γ/β (inserting identity affines where a norm has none) and the head;
    return what stays trainable. A network without any normalisation is refused (TrainingError)."""
    return _trainable(model, arch)[0]


bn_only_parameters = norm_only_parameters


def count(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def norm_only_setup(
    model: nn.Module, arch: Architecture, seed: int
) -> tuple[list[nn.Parameter], dict, dict, TrainedNorms]:
    """Prepare a candidate for norm-only training: γ statistics as loaded, the fresh head, inserted affines, the
    frozen rest.

    Returns the trainable parameters, the γ statistics before (the candidate's own γ: inserted affines are not
    part of it), the γ values at the start of training (inserted ones at 1: the reference the change of γ
    during norm-only training is measured from) and what is trained.
    """
    gamma_before = gamma_stats(model)
    reinit_head(model, arch, seed)
    params, info = _trainable(model, arch)
    return params, gamma_before, gamma_values(model), info


def bn_only_setup(model: nn.Module, arch: Architecture, seed: int) -> tuple[list[nn.Parameter], dict, dict]:
    """:func:`norm_only_setup` without the :class:`TrainedNorms` (the name and shape callers had before)."""
    params, before, start, _ = norm_only_setup(model, arch, seed)
    return params, before, start


def norm_only_evaluate(
    model: nn.Module,
    arch: Architecture,
    data: TaskData,
    config: TrainConfig,
    *,
    on_progress: ProgressFn | None = None,
    label: str = "",
) -> tuple[TrainResult, dict, dict, TrainedNorms]:
    """Run norm-only training; returns the result, γ statistics before and after (with their ``change``) and
    what was trained."""
    params, gamma_before, start, info = norm_only_setup(model, arch, config.seed)
    result = train(model, params, data, config, on_progress=on_progress, label=label)
    return result, gamma_before, gamma_stats(model, reference=start), info


def bn_only_evaluate(
    model: nn.Module,
    arch: Architecture,
    data: TaskData,
    config: TrainConfig,
    *,
    on_progress: ProgressFn | None = None,
    label: str = "",
) -> tuple[TrainResult, dict, dict]:
    """:func:`norm_only_evaluate` without the :class:`TrainedNorms` (the name and shape callers had before)."""
    result, before, after, _ = norm_only_evaluate(model, arch, data, config, on_progress=on_progress, label=label)
    return result, before, after
