"""How candidates are ranked (`RankConfig`) and the ranking's training budget (`RANKING_DEFAULTS`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.options import option, validate

# The ranking budget where it differs from TrainConfig's declared defaults (which stay those of the γ probe and
# of anything else that trains BN-only without ranking). Set from the tuning task alone and fixed before any
# evaluation task's ground truth existed (bench/preregistration.json, docs/ranking-quality.md): 20 BN-only steps
# at lr 0.03, hard Dice of the last validation (score_window 1), each validation case predicted whole in one
# eval-mode pass. Kept apart from fine-tuning's FINETUNE_DEFAULTS (bnrank/engine/configs/alchemy.py);
# tests/bench/test_ranking_quality.py holds these equal to the pre-registration, so they cannot drift.
RANKING_DEFAULTS: dict[str, Any] = {
    "max_steps": 20,
    "lr": 0.03,
    "score": "dice",
    "score_window": 1,
    "validation": "whole",
}


def ranking_config(**overrides: Any) -> TrainConfig:
    """A ranking budget: TrainConfig with :data:`RANKING_DEFAULTS`, then ``overrides``."""
    return TrainConfig(**{**RANKING_DEFAULTS, **overrides})


@dataclass
class RankConfig:
    """How candidates are ranked, beside the training budget (:class:`TrainConfig`) every candidate shares.

    Declared once, like TrainConfig: surfaces generate their options from these fields (engine/options.py).
    """

    halving_rounds: int = option(
        1,
        help="successive-halving rounds: 1 trains every candidate for max_steps; R > 1 gives every candidate "
        "max_steps / eta^(R-1) steps, then the better 1/eta of them eta times as many (continuing the same run and "
        "schedule), and so on, the last round ending at max_steps",
        ge=1,
        le=10,
    )
    halving_eta: int = option(
        2, help="halving keeps 1/eta of the candidates per round, eta times the steps", ge=2, le=8
    )
    batched: bool = option(
        False,
        api=False,  # the service runs one task per candidate: there is no process training several together
        help="train the candidates of one architecture together in one vmapped network (torch.func); off by default: "
        "at one thread it was 0.69x the speed of one at a time on this CPU (bench/engine_speed.py --only batched)",
    )
    tie_resamples: int = option(
        1000,
        help="bootstrap resamples over validation cases and the last validations behind tie guidance; 0 = no ties",
        ge=0,
        le=100_000,
    )
    tie_confidence: float = option(
        0.9,
        help="two candidates are tied unless one scores higher than the other in at least this share of resamples",
        gt=0.5,
        lt=1,
    )

    def __post_init__(self) -> None:
        validate(self)


# All-parameter fine-tuning to the ranking-quality benchmark's converged budget, with its learning rate (that
# of `bnrank alchemy`'s fine-tuning: full training wants a smaller step than BN-only training) and its cosine
# decay (`rank --verify`, bnrank/engine/verify.py): the budget at which fine-tuning agrees with itself across
# seeds (docs/ranking-quality.md).
VERIFY_STEPS = 600
VERIFY_LR = 3e-3
