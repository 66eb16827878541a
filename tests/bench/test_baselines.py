"""The benchmark's baselines, cascades and regret statistics (bench/baseline_stats.py), on hand-made results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.bench.test_ranking_quality import _module

qs = _module("quality_stats")
bs = _module("baseline_stats")


def _gt(means, sd: float, seeds: int = 5, cases: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(means)[None, :, None] + rng.normal(0, sd, (seeds, len(means), cases))


def test_regret_is_the_truths_best_minus_the_pick_and_expected_over_a_tied_first_place():
    truth = [0.9, 0.8, 0.5]
    assert bs.regret([3, 2, 1], truth) == pytest.approx(0.0)
    assert bs.regret([1, 2, 3], truth) == pytest.approx(0.4)
    # every candidate at the same score (e.g. all at Dice 0): the pick is any of them
    assert bs.regret([0, 0, 0], truth) == pytest.approx(0.9 - np.mean(truth))
    assert bs.regret([1, 1, 0], truth) == pytest.approx(0.05)


def test_tied_top_group_keeps_noise_level_candidates_and_drops_clearly_worse_ones():
    gt = _gt([0.90, 0.899, 0.70, 0.50], sd=0.02)
    group = bs.tied_top_group(gt, n=300)
    assert 0 in group and 1 in group
    assert 2 not in group and 3 not in group
    # without noise every difference is real: the group is the best alone
    exact = _gt([0.9, 0.89, 0.7], sd=0.0)
    assert bs.tied_top_group(exact, n=50) == [0]


def test_in_group_is_a_share_for_a_tied_pick():
    assert bs.in_group([3, 2, 1], [0, 1]) == 1.0
    assert bs.in_group([1, 2, 3], [0, 1]) == 0.0
    assert bs.in_group([5, 5, 1, 5], [0]) == pytest.approx(1 / 3)


def test_seed_sd_pools_the_variance_over_seeds():
    s = np.array([[0.8, 0.5], [0.9, 0.5], [1.0, 0.5]])  # seeds × candidates, one case
    assert bs.seed_sd(s[:, :, None]) == pytest.approx(math.sqrt((0.01 + 0.0) / 2))
    assert math.isnan(bs.seed_sd(s[:1, :, None]))


def test_random_pick_expects_the_mean_regret_and_no_order():
    truth = [0.9, 0.7, 0.5, 0.3]
    r = bs.random_pick(truth, [0, 1])
    assert r["regret"] == pytest.approx(0.9 - 0.6)
    assert r["in_group"] == 0.5
    assert abs(r["wtau"]) < 0.05


def test_architecture_prior_scores_by_the_tuning_tasks_mean_per_architecture():
    tuning = {"a1": 0.9, "a2": 0.8, "b1": 0.5}
    arch = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "c1": "C"}
    prior = bs.architecture_prior(tuning, arch, ["a3", "b1", "c1"])
    assert prior[:2] == pytest.approx([0.85, 0.5])
    assert prior[2] < 0.5  # an architecture never seen on the tuning task goes last


def test_lexicographic_orders_by_the_first_key_then_the_next():
    combined = bs.lexicographic([1, 1, 2, 0], [0.3, 0.9, 0.1, 5.0])
    assert list(np.argsort(-np.asarray(combined))) == [2, 1, 0, 3]


def test_race_puts_the_members_first_in_the_race_order_and_the_rest_by_the_base():
    base = [0.9, 0.8, 0.7, 0.6, 0.5]
    final = bs.race(base, members=[1, 3], race_scores=[0.0, 0.2, 9.0, 0.7, 9.0])
    assert list(np.argsort(-np.asarray(final))) == [3, 1, 0, 2, 4]


def test_leaders_and_top_k():
    assert bs.leaders([0.1, 0.5, 0.3, 0.2], ["A", "A", "B", "B"]) == [1, 2]
    assert bs.top_k([0.1, 0.5, 0.3, 0.2], 2) == [1, 2]


def test_measures_on_a_perfect_and_a_reversed_proxy():
    gt = _gt([0.9, 0.7, 0.5], sd=0.01)
    group, sd = bs.tied_top_group(gt, n=100), bs.seed_sd(gt)
    good = bs.measures([3, 2, 1], gt, group, sd)
    assert good["wtau"] == pytest.approx(1.0) and good["regret"] == 0 and good["in_group"] == 1
    bad = bs.measures([1, 2, 3], gt, group, sd)
    assert bad["regret"] == pytest.approx(qs.gt_mean(gt)[0] - qs.gt_mean(gt)[2])
    assert bad["regret_sd"] == pytest.approx(bad["regret"] / sd) and bad["in_group"] == 0


def test_held_out_seed_never_judges_a_seed_by_its_own_outcome():
    # Each seed's own run disagrees with the other seeds on the top pair: a proxy made from seed s is right
    # about seed s (its own copy) and wrong about the rest. Judged in sample it would look perfect.
    rows = np.array([[0.9, 0.8, 0.1], [0.8, 0.9, 0.1], [0.8, 0.9, 0.1], [0.8, 0.9, 0.1]])
    gt = rows[:, :, None]
    own = rows.copy()
    own[0] = [0.9, 0.8, 0.1]  # seed 0's proxy picks candidate 0; the others' truth says candidate 1
    m = bs.held_out_seed(own, gt, n=50)
    in_sample = np.mean([bs.regret(own[s], rows[s]) for s in range(4)])
    assert in_sample == 0.0
    assert m["regret"] > 0.0  # seed 0's pick is wrong for seeds 1-3
    assert m["wtau_lo"] < m["wtau_hi"]


def test_proxy_seed_noise_widens_the_interval_and_shows_in_self_agreement():
    gt = _gt([0.9, 0.8, 0.7, 0.6, 0.5], sd=0.005, seed=1)
    steady = np.tile([5.0, 4.0, 3.0, 2.0, 1.0], (3, 1))
    b = bs.bootstrap_proxy_seeds(gt, steady, n=200)
    assert b["wtau"]["value"] == pytest.approx(1.0) and b["self_agreement"]["value"] == pytest.approx(1.0)
    assert b["regret"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    rng = np.random.default_rng(0)
    noisy = np.array([5.0, 4.0, 3.0, 2.0, 1.0]) + rng.normal(0, 2.0, (3, 5))
    n = bs.bootstrap_proxy_seeds(gt, noisy, n=200)
    assert n["self_agreement"]["value"] < 0.9
    assert n["wtau"]["hi"] - n["wtau"]["lo"] > b["wtau"]["hi"] - b["wtau"]["lo"]
    assert n["regret"]["hi"] > 0.0  # some draw of proxy seeds picks a worse candidate


def test_the_best_of_a_rankings_top_k_is_what_fine_tuning_k_candidates_loses():
    truth = [0.80, 0.90, 0.85, 0.70]
    assert bs.topk_regret([4, 3, 2, 1], truth, 1) == pytest.approx(0.10)  # the top-1 regret
    assert bs.topk_regret([4, 3, 2, 1], truth, 2) == pytest.approx(0.0)  # the best is second
    assert bs.topk_regret([3, 0, 2, 1], truth, 3) == pytest.approx(0.05)  # the best is last: 0.90 − 0.85
    # a tie at the cut (a family prior): the best is one of the three tied, so top 1 loses 2/3 × its draws' mean
    tied = bs.topk_regret([1, 1, 1, 0], truth, 1, draws=3000)
    assert tied == pytest.approx((0.10 + 0.05) / 3, abs=0.005)
    assert bs.topk_regret([1, 1, 1, 0], truth, 3) == pytest.approx(0.0)
