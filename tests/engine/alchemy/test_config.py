"""Alchemy options (configs/alchemy.py): declared once, validated with the field named."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from bnrank.engine.alchemy import (
    FINETUNE_DEFAULTS,
    MODES,
    AlchemyConfig,
    AlchemyError,
    finetune_config,
    planned_steps,
)
from bnrank.engine.configs.gamma import DEFAULT_THRESHOLD
from bnrank.engine.errors import BNRankError
from bnrank.engine.folds import FoldError
from bnrank.engine.options import offered


def test_options_are_validated() -> None:
    with pytest.raises(AlchemyError, match="mode"):
        AlchemyConfig(mode="magic")
    with pytest.raises(AlchemyError, match="lam"):
        AlchemyConfig(lam=float("nan"))
    with pytest.raises(AlchemyError, match="not both"):
        AlchemyConfig(threshold=0.1, fraction=0.2)
    with pytest.raises(AlchemyError, match="fraction"):
        AlchemyConfig(fraction=1.5)
    with pytest.raises(AlchemyError, match="threshold"):
        AlchemyConfig(threshold=-1.0)
    with pytest.raises(AlchemyError, match="max_share"):
        AlchemyConfig(max_share=0.0)
    assert issubclass(AlchemyError, BNRankError) and issubclass(FoldError, BNRankError)


def test_identification_has_its_own_budget_inside_the_fine_tuning_schedule() -> None:
    options = AlchemyConfig()
    assert (options.identify_steps, options.identify_lr) == (60, 1e-2)  # as a ranking's BN-only phase
    finetune = finetune_config()
    assert {k: getattr(finetune, k) for k in FINETUNE_DEFAULTS} == FINETUNE_DEFAULTS
    budget = options.identify_config(finetune)
    assert (budget.max_steps, budget.lr) == (60, 1e-2)
    assert budget == replace(finetune, max_steps=60, lr=1e-2)  # everything else: the fine-tuning schedule
    assert finetune_config(max_steps=7).max_steps == 7
    with pytest.raises(AlchemyError, match="identify_steps"):
        AlchemyConfig(identify_steps=0)
    with pytest.raises(AlchemyError, match="identify_lr"):
        AlchemyConfig(identify_lr=0.0)


@pytest.mark.parametrize(
    ("options", "switches", "steps"),
    [
        ({}, (True, True, True), 60 + 120),
        ({"maximization": False, "identification": False}, (False, True, False), 120),
        ({"mode": "finetune"}, (False, False, False), 120),
        ({"mode": "finetune", "identification": True, "modification": True}, (False, False, False), 120),
        ({"mode": "scratch", "maximization": True}, (False, False, True), 120),
    ],
)
def test_the_switches_take_effect_per_mode(options, switches, steps) -> None:
    config = AlchemyConfig(**options)
    assert (config.identifies, config.modifies, config.maximizes) == switches
    assert planned_steps(finetune_config(), config) == steps


def test_every_alchemy_option_is_declared_once_and_offered_everywhere() -> None:
    names = [f.name for f in fields(AlchemyConfig)]
    assert [o.name for o in offered(AlchemyConfig, "api")] == names
    assert [o.name for o in offered(AlchemyConfig, "cli")] == names
    assert AlchemyConfig().gamma_threshold == DEFAULT_THRESHOLD and AlchemyConfig(threshold=0.2).gamma_threshold == 0.2
    assert set(MODES) == {"scratch", "finetune", "alchemy"}
