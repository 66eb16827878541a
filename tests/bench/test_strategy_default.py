"""The product's default ranking strategy against benchmark v2's pre-registration (bench/preregistration_v2.json).

The pre-registration lists the candidate strategies and the decision rule that will choose among them on the tuning
task; it fixes no winner. Until it does (a ``chosen`` entry written with the tuning task's result), the default is
the thesis's norm-only evaluation; once it does, the default must be that choice. The cascade's declared defaults
are the pre-registered cascade's setting, so the benchmark runs what the product serves.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bnrank.engine.cascade import race_ends
from bnrank.engine.configs.ranking import DEFAULT_STRATEGY, STRATEGIES, RankConfig

PREREGISTRATION = Path(__file__).resolve().parents[2] / "bench" / "preregistration_v2.json"


def _registered() -> dict:
    return json.loads(PREREGISTRATION.read_text())


def test_the_default_is_the_pre_registered_choice_or_norm_only_until_there_is_one() -> None:
    registered = _registered()
    assert set(STRATEGIES) <= set(registered["strategies"])
    chosen = registered.get("chosen")
    assert (chosen["strategy"] if chosen else "norm_only") == DEFAULT_STRATEGY


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
