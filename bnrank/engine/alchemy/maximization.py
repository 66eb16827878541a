"""Maximization (thesis §3.2.2, step 3): fine-tune every parameter with L + λ·R_γ.

R_γ = −α·mean(Γ) + β·std(Γ) over every normalisation γ of the network (thesis Eq. 3.1; BatchNorm's there,
every kind's here): its gradient raises the mean |γ| and pulls each γ towards it, so fine-tuning is pushed
to use all kernels (the re-initialised ones included) rather than switch some off again. With maximization
off the same fine-tuning runs on L alone (the baselines of thesis Table 4.2); R_γ is recorded before and
after either way, so runs compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bnrank.engine.configs.alchemy import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_LAMBDA, AlchemyConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.gamma import gamma_vector, has_gamma
from bnrank.engine.training.patches import TaskData
from bnrank.engine.training.trainer import ProgressFn, TrainResult, train

MAXIMIZATION = "maximization: fine-tuning with R_γ"
FINE_TUNING = "fine-tuning"
_STD_EPS = 1e-12  # keeps ∂std/∂γ finite when every γ is equal (a fresh network: all γ = 1)


def r_gamma(model: nn.Module, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """R_γ = −α·mean(Γ) + β·std(Γ) over every normalisation γ of the network (thesis Eq. 3.1), differentiable."""
    g = gamma_vector(model).float()
    mean = g.mean()
    std = torch.sqrt(((g - mean) ** 2).mean() + _STD_EPS)
    return -alpha * mean + beta * std


def gamma_regulariser(
    alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA, lam: float = DEFAULT_LAMBDA
) -> Callable[[nn.Module], torch.Tensor]:
    """λ·R_γ in the form ``training.train(regulariser=...)`` takes."""

    def regulariser(model: nn.Module) -> torch.Tensor:
        return lam * r_gamma(model, alpha, beta)

    return regulariser


@dataclass
class Tuning:
    """The fine-tuning run and R_γ before and after it (empty for a network without γ)."""

    training: TrainResult
    r_gamma: dict[str, float]


def maximize(
    model: nn.Module,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig,
    *,
    on_progress: ProgressFn | None = None,
) -> Tuning:
    """Fine-tune every parameter of ``model`` in place on L + λ·R_γ (``options``' α, β and λ)."""
    regulariser = gamma_regulariser(options.alpha, options.beta, options.lam)
    return fine_tune(model, data, config, options, regulariser=regulariser, on_progress=on_progress)


def fine_tune(
    model: nn.Module,
    data: TaskData,
    config: TrainConfig,
    options: AlchemyConfig,
    *,
    regulariser: Callable[[nn.Module], torch.Tensor] | None = None,
    on_progress: ProgressFn | None = None,
) -> Tuning:
    """Fine-tune every parameter of ``model`` in place on L (plus ``regulariser``), recording R_γ around it."""
    for p in model.parameters():
        p.requires_grad_(True)
    r_values: dict[str, float] = {}
    if has_gamma(model):
        with torch.no_grad():
            r_values["before"] = float(r_gamma(model, options.alpha, options.beta))
    label = FINE_TUNING if regulariser is None else MAXIMIZATION
    result = train(
        model, model.parameters(), data, config, regulariser=regulariser, on_progress=on_progress, label=label
    )
    if r_values:
        with torch.no_grad():
            r_values["after"] = float(r_gamma(model, options.alpha, options.beta))
    return Tuning(result, r_values)
