"""BN-only evaluation (thesis §3.2.1 and §4.4): how well a candidate's frozen kernels serve a new task.

Everything is frozen except BatchNorm γ/β and the segmentation head. The head is re-initialised from the
same seed for every candidate of an architecture: a pilot here that kept one candidate's own head and
gave another a random frozen one produced a ranking anti-correlated with fine-tuning. With kernels
frozen, all a candidate can do is rescale and shift the features it already has, so the Dice it reaches
measures those features, and its γ show how many of them the task uses.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from bnrank.engine.architectures import Architecture, head_keys
from bnrank.engine.errors import TrainingError
from bnrank.engine.gamma import bn_layers, gamma_stats, gamma_values, has_batchnorm
from bnrank.engine.training import ProgressFn, TaskData, TrainConfig, TrainResult, train


def head_modules(model: nn.Module, arch: Architecture) -> list[tuple[str, nn.Module]]:
    """Modules owning the head's parameters, in a fixed (sorted) order so re-initialisation is reproducible."""
    modules = dict(model.named_modules())
    names = sorted({key.rsplit(".", 1)[0] for key in head_keys(model, arch)})
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


def bn_only_parameters(model: nn.Module, arch: Architecture) -> list[nn.Parameter]:
    """Freeze the model except BN γ/β and the head; return what stays trainable."""
    if not has_batchnorm(model):
        raise TrainingError(f"{arch.name} has no BatchNorm layers: BN-only evaluation needs them")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: dict[int, nn.Parameter] = {}
    for _, bn in bn_layers(model):
        for p in (bn.weight, bn.bias):
            trainable[id(p)] = p
    for _, module in head_modules(model, arch):
        for p in module.parameters(recurse=False):
            trainable[id(p)] = p
    for p in trainable.values():
        p.requires_grad_(True)
    return list(trainable.values())


def count(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def bn_only_setup(model: nn.Module, arch: Architecture, seed: int) -> tuple[list[nn.Parameter], dict, dict]:
    """Prepare a candidate for BN-only training: γ statistics as loaded, the fresh head, the frozen rest.

    Returns the trainable parameters, the γ statistics before and the γ values at the start of training (the
    reference the change of γ during BN-only training is measured from).
    """
    gamma_before = gamma_stats(model)
    reinit_head(model, arch, seed)
    params = bn_only_parameters(model, arch)
    return params, gamma_before, gamma_values(model)


def bn_only_evaluate(
    model: nn.Module,
    arch: Architecture,
    data: TaskData,
    config: TrainConfig,
    *,
    on_progress: ProgressFn | None = None,
    label: str = "",
) -> tuple[TrainResult, dict, dict]:
    """Run BN-only training; returns the result and γ statistics before and after (with their ``change``)."""
    params, gamma_before, start = bn_only_setup(model, arch, config.seed)
    result = train(model, params, data, config, on_progress=on_progress, label=label)
    return result, gamma_before, gamma_stats(model, reference=start)
