"""The package's public surface: every name callers import from ``bnrank.engine.alchemy`` is still there."""

from __future__ import annotations

import inspect

import bnrank.engine.alchemy as alchemy

PUBLIC = [
    "AlchemyConfig",
    "AlchemyError",
    "AlchemyResult",
    "MODES",
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_LAMBDA",
    "DEFAULT_MAX_SHARE",
    "FINETUNE_DEFAULTS",
    "finetune_config",
    "run_alchemy",
    "alchemy_checkpoint",
    "alchemy_kfold",
    "FoldsResult",
    "fold_path",
    "write_json",
    "prepare_model",
    "require_batchnorm",
    "identify",
    "modify",
    "maximize",
    "r_gamma",
    "gamma_regulariser",
    "find_conv_bn_pairs",
    "select_redundant",
    "Selection",
    "planned_steps",
]


def test_public_names_are_exported() -> None:
    assert set(PUBLIC) <= set(alchemy.__all__)
    assert all(hasattr(alchemy, name) for name in alchemy.__all__)


def test_the_three_steps_are_functions_in_modules_named_for_them() -> None:
    for step, module in (("identify", "identification"), ("modify", "modification"), ("maximize", "maximization")):
        function = getattr(alchemy, step)
        assert inspect.isfunction(function) and function.__module__ == f"bnrank.engine.alchemy.{module}"
    assert alchemy.r_gamma.__module__ == alchemy.maximize.__module__  # R_γ beside maximization
