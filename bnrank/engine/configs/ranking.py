"""How candidates are ranked (`RankConfig`) and the ranking's training budget (`RANKING_DEFAULTS`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.options import option, validate

# The ranking budget where it differs from TrainConfig's declared defaults (which stay those of the γ probe and
# of anything else that trains BN-only without ranking). Chosen on benchmark v2's tuning task by its
# pre-registered decision rule (bench/preregistration_v2.json, outcome in bench/results/v2/decision.json) among
# 63 strategy settings costing at most a tenth of fine-tuning every candidate: 50 norm-only steps at lr 0.03,
# soft Dice of the last validation (score window 1: soft Dice never collapses to all-zero on a small structure),
# each validation case predicted whole in one eval-mode pass. It replaced v1's 20 steps with hard Dice, and it is
# reported out of sample on v2's evaluation tasks (docs/ranking-quality.md). Kept apart from fine-tuning's
# FINETUNE_DEFAULTS (bnrank/engine/configs/alchemy.py); tests/bench/test_strategy_default.py holds these equal
# to the decision, so they cannot drift.
RANKING_DEFAULTS: dict[str, Any] = {
    "max_steps": 50,
    "lr": 0.03,
    "score": "soft_dice",
    "score_window": 1,
    "validation": "whole",
}


def ranking_config(**overrides: Any) -> TrainConfig:
    """A ranking budget: TrainConfig with :data:`RANKING_DEFAULTS`, then ``overrides``."""
    return TrainConfig(**{**RANKING_DEFAULTS, **overrides})


# All-parameter fine-tuning to the ranking-quality benchmark's converged budget, with its learning rate (that
# of `bnrank alchemy`'s fine-tuning: full training wants a smaller step than BN-only training) and its cosine
# decay (`rank --verify`, bnrank/engine/verify.py): the budget at which fine-tuning agrees with itself across
# seeds (docs/ranking-quality.md).
VERIFY_STEPS = 600
VERIFY_LR = 3e-3

# The strategies a ranking can follow. ``norm_only`` is the thesis's BN-only evaluation, unchanged; ``cascade`` runs
# it as its first stage, scores it as the gain over each architecture's random-init controls, then races the
# leaders of every architecture by short full fine-tuning (bnrank/engine/cascade.py). Benchmark v2's tuning task
# chose ``norm_only`` at the budget above by its pre-registered decision rule (the cascade tied on regret at a
# lower τw); the cascade stays a strategy of its own.
STRATEGIES = ("norm_only", "cascade")
DEFAULT_STRATEGY = "norm_only"


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

    strategy: str = option(
        DEFAULT_STRATEGY,
        choices=STRATEGIES,
        help="norm_only: the thesis's BN-only evaluation alone; cascade: BN-only scored as the gain over random-init "
        "controls at several seeds, then a short full fine-tuning race among every architecture's leaders that stops "
        "once the leader is separated or the budget cap is reached",
    )
    control_seeds: int = option(
        3,
        help="cascade: random-init controls per architecture, one per seed; their spread is the noise floor",
        ge=2,
        le=10,
    )
    noise_floor_sd: float = option(
        2.0,
        help="cascade: a gain within this many control s.d. of the controls is flagged as inside the noise floor",
        gt=0,
        le=10,
    )
    race_leaders: int = option(2, help="cascade: candidates of each architecture, by gain, that race", ge=1, le=16)
    race_steps: int = option(100, help="cascade: fine-tuning steps of the race's last round", ge=2, le=100_000)
    race_rounds: int = option(
        3, help="cascade: successive-halving rounds of the race (steps race_steps / 2^(R-1) ... race_steps)", ge=1, le=8
    )
    race_seeds: int = option(
        2, help="cascade: seeds each racer fine-tunes at, so P(best) counts seed-to-seed noise", ge=1, le=5
    )
    race_lr: float = option(
        VERIFY_LR, help="cascade: fine-tuning learning rate (cosine to 0 over race_steps)", gt=0, le=1
    )
    separation: float = option(
        0.9, help="cascade: the race stops once the leader is best in at least this share of resamples", gt=0.5, lt=1
    )
    budget_cap: float = option(
        0.1,
        help="cascade: most the ranking may spend, as a share of fine-tuning every candidate for reference_steps "
        "(in measured seconds, each architecture's fine-tuning step calibrated in the run); the race stops before a "
        "round that would pass it",
        gt=0,
        le=1,
    )
    reference_steps: int = option(
        VERIFY_STEPS, help="cascade: the fine-tuning budget budget_cap is a share of", ge=1, le=1_000_000
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.strategy == "cascade" and (self.halving_rounds > 1 or self.batched):
            raise ValueError(
                "halving_rounds and batched apply to the norm_only strategy; the cascade halves in its fine-tuning "
                "race (race_rounds)"
            )
