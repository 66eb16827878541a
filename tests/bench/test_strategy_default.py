"""The product's default ranking strategy and budget against benchmark v2's decision (bench/results/v2/decision.json).

The pre-registration (bench/preregistration_v2.json) lists the candidate strategies and the decision rule that
chooses among them on the tuning task; it fixes no winner. ``bench/report_v2.py --decision`` applies the rule once
the tuning task is complete and writes its outcome to ``bench/results/v2/decision.json``. Until that file holds a
choice, the default is the thesis's norm-only evaluation at v1's pre-registered setting; once it does, the default
strategy and the norm-only budget every strategy starts from must be that choice. The cascade's declared defaults
are the pre-registered cascade's setting, so the benchmark runs what the product serves.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bnrank.engine.cascade import race_ends
from bnrank.engine.configs.ranking import DEFAULT_STRATEGY, STRATEGIES, RankConfig, ranking_config
from bnrank.engine.configs.training import TrainConfig
from service.core.params import RankingParams

PREREGISTRATION = Path(__file__).resolve().parents[2] / "bench" / "preregistration_v2.json"
DECISION = PREREGISTRATION.parent / "results" / "v2" / "decision.json"


def _registered() -> dict:
    return json.loads(PREREGISTRATION.read_text())


def _decision() -> dict | None:
    return json.loads(DECISION.read_text()) if DECISION.is_file() else None


def test_the_default_is_the_decision_rules_choice_or_v1s_norm_only_until_there_is_one() -> None:
    from tests.bench.test_ranking_quality import _module

    registered = _registered()
    assert set(STRATEGIES) <= set(registered["strategies"])
    decision = _decision()
    if decision is None or decision["status"] != "chosen":
        setting = json.loads((PREREGISTRATION.parent / "preregistration.json").read_text())["setting"]
        strategy, budget = "norm_only", _module("quality_stats").engine_options(setting)[0]
    else:
        strategy, budget = _module("v2_strategies").engine_setting(decision["chosen"])
    assert strategy == DEFAULT_STRATEGY and RankConfig().strategy == strategy
    engine = ranking_config()
    assert {k: getattr(engine, k) for k in budget} == budget
    served = RankingParams().train_config()  # the REST API's defaults, and through them the dashboard's
    assert {k: getattr(served, k) for k in budget} == budget
    assert budget != {k: getattr(TrainConfig(), k) for k in budget}  # kept apart from the plain TrainConfig's


def test_the_cascades_defaults_are_the_pre_registered_cascade() -> None:
    registered = _registered()
    rank = RankConfig(strategy="cascade")
    controls = Counter(c["architecture"] for c in registered["controls"])
    assert set(controls.values()) == {rank.control_seeds}  # three random-init controls per family
    assert "within 2 s.d." in registered["strategies"]["gain_over_controls"] and rank.noise_floor_sd == 2.0
    assert "top 2 of every family" in registered["strategies"]["cascade"] and rank.race_leaders == 2
    short = registered["proxies"]["short_finetune"]
    assert race_ends(rank) == short["steps"] and short["schedule"] == f"cosine over {rank.race_steps} steps"
    assert rank.race_lr == registered["ground_truth"]["lr"]
    assert rank.budget_cap == registered["targets"]["cost_at_most"]
