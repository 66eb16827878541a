"""Every option of network alchemy, declared once (with identification's budget and fine-tuning's defaults).

The API's alchemy request, the stored job parameters and the CLI's ``alchemy`` flags are generated from
:class:`AlchemyConfig` and :data:`FINETUNE_DEFAULTS`; the engine reads nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bnrank.engine.configs.gamma import DEFAULT_THRESHOLD
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import BNRankError
from bnrank.engine.options import option, validate

MODES = ("scratch", "finetune", "alchemy")
DEFAULT_ALPHA = 0.1
DEFAULT_BETA = 1.0
DEFAULT_LAMBDA = 1e-4
DEFAULT_MAX_SHARE = 0.5
# The fine-tuning (maximization) budget where it differs from a ranking's: all parameters train, so a smaller
# learning rate than BN-only training, and more steps than a ranking (docs/alchemy.md).
FINETUNE_DEFAULTS = {"max_steps": 120, "lr": 3e-3, "val_every": 20, "patience": 4}


class AlchemyError(BNRankError):
    """An alchemy request that cannot run as asked."""


@dataclass
class AlchemyConfig:
    """Thesis §3.2.2's three steps and their switches; ``mode`` gives the baselines of Table 4.2."""

    mode: str = option(
        "alchemy",
        help="scratch: the checkpoint's architecture, randomly initialised; finetune: the checkpoint, plain "
        "fine-tuning; alchemy: identification → modification → fine-tuning",
        choices=MODES,
    )
    identification: bool = option(True, help="BN-only training first, to find redundant kernels")
    modification: bool = option(True, help="re-initialise the kernels found redundant")
    maximization: bool | None = option(None, help="train with L + λ·R_γ (default: on in alchemy mode only)")
    alpha: float = option(DEFAULT_ALPHA, help="R_γ weight of the mean |γ|", ge=0)
    beta: float = option(DEFAULT_BETA, help="R_γ weight of the std of γ", ge=0)
    lam: float = option(DEFAULT_LAMBDA, help="λ, weight of R_γ in the loss", ge=0)
    threshold: float | None = option(
        None, help=f"|γ| under which a kernel is redundant (default {DEFAULT_THRESHOLD})", gt=0
    )
    fraction: float | None = option(None, help="or: this lowest share of all γ is redundant", gt=0, le=1)
    max_share: float = option(
        DEFAULT_MAX_SHARE, help="never re-initialise more than this share of all kernels (capped, warned)", gt=0, le=1
    )
    identify_steps: int = option(60, help="BN-only steps of the identification phase", ge=1, le=1_000_000)
    identify_lr: float = option(
        1e-2, help="learning rate of identification (gentler than a ranking's 0.03, so γ settles)", gt=0, le=10
    )

    def __post_init__(self) -> None:
        validate(self, AlchemyError)
        if self.threshold is not None and self.fraction is not None:
            raise AlchemyError("give a threshold or a fraction of redundant kernels, not both")

    @property
    def identifies(self) -> bool:
        return self.mode == "alchemy" and self.identification

    @property
    def modifies(self) -> bool:
        return self.mode == "alchemy" and self.modification

    @property
    def maximizes(self) -> bool:
        return self.mode == "alchemy" if self.maximization is None else self.maximization

    @property
    def gamma_threshold(self) -> float:
        return DEFAULT_THRESHOLD if self.threshold is None else self.threshold

    def identify_config(self, finetune: TrainConfig) -> TrainConfig:
        """Identification's BN-only budget: the fine-tuning schedule with identification's steps and rate."""
        return dataclasses.replace(finetune, max_steps=self.identify_steps, lr=self.identify_lr)


def finetune_config(**overrides: object) -> TrainConfig:
    """A fine-tuning budget: TrainConfig with :data:`FINETUNE_DEFAULTS`, then ``overrides``."""
    return TrainConfig(**{**FINETUNE_DEFAULTS, **overrides})  # type: ignore[arg-type]
