"""The cascade strategy on tiny volumes: its stages, noise floor, race, stop rule, budget cap and verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bnrank.engine.architectures import build_model
from bnrank.engine.cascade import (
    BUDGET_CAP,
    NO_COST,
    NO_RACE,
    SEPARATED,
    Costs,
    Race,
    StageOne,
    close_round,
    may_run,
    predicted_seconds,
    rank_cascade,
    rank_order,
    verdict,
)
from bnrank.engine.checkpoints import save_weights
from bnrank.engine.configs.ranking import DEFAULT_STRATEGY, STRATEGIES, RankConfig
from bnrank.engine.entries import RankEntry
from bnrank.engine.errors import BNRankError
from bnrank.engine.ranking import Candidate, close_ranking, evaluate_candidate
from bnrank.engine.separation import p_best, resampled_means, tied_with
from bnrank.engine.small_structures import SMALL_SHARE, small_structure_rule, smallest_foreground_share
from bnrank.engine.strategies import rank_by_strategy
from bnrank.engine.training.patches import TaskData, Volume

from .tiny import blob_task, small_config


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _candidates(tmp_path: Path, widths: list[int]) -> list[Candidate]:
    cands = []
    for i, width in enumerate(widths):
        torch.manual_seed(i)
        model = build_model("unet3d", in_channels=1, out_channels=3, width=width)
        cands.append(Candidate(f"w{width}_{i}", save_weights(model, tmp_path / f"w{width}_{i}.safetensors")))
    return cands


def _tiny_rank(**kw) -> RankConfig:
    base = dict(
        strategy="cascade",
        control_seeds=2,
        race_leaders=2,
        race_steps=4,
        race_rounds=2,
        race_seeds=2,
        budget_cap=1.0,
        reference_steps=1000,
        tie_resamples=200,
    )
    return RankConfig(**{**base, **kw})


def test_the_default_strategy_is_the_thesis_until_the_benchmark_chooses() -> None:
    # bench/preregistration_v2.json names candidate strategies and a decision rule, not a winner: the default
    # stays norm-only evaluation until the tuning task has chosen.
    assert DEFAULT_STRATEGY == "norm_only" == RankConfig().strategy
    assert set(STRATEGIES) == {"norm_only", "cascade"}


def test_cascade_refuses_halving_and_missing_controls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="race_rounds"):
        RankConfig(strategy="cascade", halving_rounds=2)
    with pytest.raises(BNRankError, match="controls"):
        rank_by_strategy(_candidates(tmp_path, [4]), blob_task(), small_config(), _tiny_rank(), control=False)


def test_cascade_stages_noise_floor_race_and_one_verdict(tmp_path: Path) -> None:
    cands = _candidates(tmp_path, [4, 4, 4, 6])
    result = rank_by_strategy(cands, blob_task(), small_config(max_steps=4, score_window=1), _tiny_rank())
    c = result.cascade
    assert c is not None and [s["stage"] for s in c["stages"]] == ["norm_only", "race"]
    first, race = c["stages"]
    # one control group per build (width 4 and width 6), each at two seeds: its spread is the noise floor
    assert len(first["noise_floor"]) == 2
    for f in first["noise_floor"]:
        assert len(f["scores"]) == 2 and f["sd"] >= 0 and f["floor"] == pytest.approx(2 * f["sd"], abs=1e-4)
    for row in first["rows"]:
        assert row["gain"] is not None and isinstance(row["inside_noise_floor"], bool)
    # the leaders of every architecture race: at most two of width 4, the only one of width 6
    assert "w6_3" in race["leaders"] and len(race["leaders"]) == 3
    ran = [r for r in race["rounds"] if "racers" in r]
    assert ran and {x["name"] for x in ran[0]["racers"]} == set(race["leaders"])
    assert all(len(x["seed_scores"]) == 2 for x in ran[0]["racers"])
    cut = [x for r in ran for x in r["cut"]]
    assert all("round" in x["why"] for x in cut)
    # one verdict: the tie guidance and the stability line are read off the same race rounds
    v = c["verdict"]
    assert v["tied_group"] and v["leader"] == v["tied_group"][0] and set(v["tied_group"]) <= set(race["leaders"])
    assert result.ties["top_group"] == v["tied_group"] and result.ties["p_top_is_best"] == v["p_best"]
    assert result.stability["same_top1"] == v["same_top1"]
    assert v["separated"] == (c["stop"] == SEPARATED and len(v["tied_group"]) == 1)
    if v["separated"]:
        assert v["p_best"] >= 0.9 and v["same_top1"] is not False
    ranked = [e for e in result.entries if e.rank]
    assert ranked[0].checkpoint == v["leader"] and len(ranked) == 4
    # never "fine-tune them all": the tied group is at most the racers, short of every candidate
    assert (len(v["tied_group"]) < len(cands) and "every candidate" in v["guidance"]) or v["separated"]
    # the cost is measured seconds: the norm-only stage's rows (controls' calibration included), then each round's
    # runs; the reference is reference_steps of each architecture's calibrated fine-tuning step per candidate
    cost = c["cost"]
    first_stage = sum(e.seconds for e in result.entries)
    calibrated = [e.calibration for e in result.entries if e.is_control and e.calibration]
    assert len(calibrated) == 2 and all(x["step_seconds"] > 0 and x["validation_seconds"] > 0 for x in calibrated)
    assert set(cost["step_seconds"]) == {f["control"] for f in first["noise_floor"]}
    steps = {g: x["fine_tuning_step"] for g, x in cost["step_seconds"].items()}
    assert cost["reference_seconds"] == pytest.approx(sum(1000 * steps[r["control"]] for r in first["rows"]), rel=1e-3)
    assert cost["spent_seconds"] == pytest.approx(ran[-1]["spent_seconds"], abs=1e-3)
    assert ran[0]["spent_seconds"] > first_stage - 1e-3  # the first round's runs add to the measured norm-only stage
    assert cost["share_of_finetuning_all"] == pytest.approx(cost["spent_seconds"] / cost["reference_seconds"], abs=1e-4)


def test_the_budget_cap_stops_the_race_and_the_answer_is_not_everyone(tmp_path: Path) -> None:
    cands = _candidates(tmp_path, [4, 4, 4])
    # the cap: 0.01 % of fine-tuning 3 candidates for 1000 calibrated steps is 0.3 of one step's seconds, while the
    # norm-only stage alone measured more than the calibration's own timed steps: nothing is left for the race
    config = small_config(max_steps=4, score_window=1)
    # the data's loading and preprocessing (measured by `bnrank rank`) counts once: spent, and in the reference
    result = rank_by_strategy(cands, blob_task(), config, _tiny_rank(budget_cap=0.0001), prepare_seconds=2.0)
    c = result.cascade
    assert c["stop"] == BUDGET_CAP
    rounds = c["stages"][1]["rounds"]
    assert len(rounds) == 1 and "skipped" in rounds[0] and "would pass the cap" in rounds[0]["skipped"]
    assert c["verdict"]["tied_group"] and "norm-only gains" in c["verdict"]["evidence"]
    assert c["cost"]["spent_steps"] == 5 * c["stages"][0]["config"]["max_steps"]
    assert c["cost"]["spent_seconds"] == pytest.approx(2.0 + sum(e.seconds for e in result.entries), abs=1e-2)
    assert c["cost"]["prepare_seconds"] == 2.0 and c["cost"]["reference_seconds"] > 2.0
    assert c["cost"]["spent_seconds"] > c["cost"]["cap_seconds"]


def _race_at(steps: dict[str, float], spent: float, cap: float) -> tuple[Race, StageOne]:
    rows = [{"name": "dear", "control": "big", "gain": 0.2}, {"name": "cheap", "control": "small", "gain": 0.1}]
    costs = Costs(step=steps, validation={"big": 0.0, "small": 0.0}, reference=None, cap=cap)
    return Race(alive=[0, 1], costs=costs, spent=spent), StageOne(rows, {}, [0, 1])


def test_the_cap_is_held_in_measured_seconds_not_steps() -> None:
    rank = RankConfig(strategy="cascade", race_steps=4, race_rounds=2, race_seeds=1)  # rounds end at 2 and 4 steps
    # one round of two racers is 4 steps either way; in seconds it is 2 x 1.0 + 2 x 0.01 when one architecture's
    # fine-tuning step costs 100 times the other's
    race, stage = _race_at({"big": 1.0, "small": 0.01}, spent=0.5, cap=2.5)
    assert predicted_seconds(race, stage, rank, 0) == pytest.approx(2.02)
    assert not may_run(race, stage, rank, 0) and race.stop == BUDGET_CAP
    race, stage = _race_at({"big": 0.01, "small": 0.01}, spent=0.5, cap=2.5)
    assert may_run(race, stage, rank, 0)
    # after a round, each racer's own measured seconds per step (validation included) predict the next one
    race.per_step = {0: 0.5, 1: 0.1}
    assert predicted_seconds(race, stage, rank, 1) == pytest.approx(2 * 0.5 + 2 * 0.1)
    # without any calibration there is no cap to hold: the race does not run and says why
    race, stage = _race_at({}, spent=0.0, cap=2.5)
    race.costs.cap = None
    assert not may_run(race, stage, rank, 0) and race.stop == NO_COST


def test_a_rank_1_that_did_not_lead_at_half_the_budget_is_never_called_apart() -> None:
    # 'a' wins every validation case at the end, so the case bootstrap alone calls it apart; but 'b' led at half the
    # budget (stability: same top-1 no): the one answer puts both in the top group
    def entry(name: str, half: float, end: float) -> RankEntry:
        curve = [{"step": 2, "dice": half, "score": half}, {"step": 4, "dice": end, "score": end}]
        return RankEntry(name, score=end, curve=curve, steps=4, case_scores=[[end, end + 0.01, end - 0.01]])

    entries = [entry("a", 0.2, 0.9), entry("b", 0.5, 0.3), entry("c", 0.1, 0.2)]
    ordered, closed = close_ranking(entries, small_config(max_steps=4, score_window=1), RankConfig(tie_resamples=200))
    ties, stable = closed["ties"], closed["stability"]
    assert stable["same_top1"] is False and stable["top1_at_fraction"] == "b"
    assert ties["top_group"] == ["a", "b"] and "b led at 50%" in ties["reconciled"]
    by_name = {e.checkpoint: e for e in ordered}
    assert by_name["b"].tie_group == 1 and "b" in by_name["a"].tied_with and "a" in by_name["b"].tied_with
    # a stable leader is left as the bootstrap says
    steady = [entry("a", 0.8, 0.9), entry("b", 0.5, 0.3), entry("c", 0.1, 0.2)]
    _, closed = close_ranking(steady, small_config(max_steps=4, score_window=1), RankConfig(tie_resamples=200))
    assert closed["ties"]["top_group"] == ["a"] and "reconciled" not in closed["ties"]


def test_a_leader_that_changed_between_rounds_is_never_called_separated() -> None:
    rows = [{"name": n, "gain": 0.1} for n in ("a", "b")]
    rounds = [
        {"round": 1, "steps": 2, "racers": [{"name": "b", "score": 0.6}, {"name": "a", "score": 0.5}], "cut": []},
        {"round": 2, "steps": 4, "racers": [{"name": "a", "score": 0.9}, {"name": "b", "score": 0.1}], "cut": []},
    ]
    stats = np.tile([[0.9, 0.1]], (100, 1))  # a is ahead in every resample
    costs = Costs({}, {}, None, None)
    race = Race(alive=[0, 1], costs=costs, rounds=rounds, last={"stats": stats, "p": p_best(stats)}, stop=SEPARATED)
    v = verdict(StageOne(rows, {}, [0, 1]), race, RankConfig(), [], [], {}, 0)
    assert v["p_best"] == 1.0 and v["same_top1"] is False
    assert not v["separated"] and v["tied_group"] == ["a", "b"] and "Fine-tune these 2" in v["guidance"]


def test_the_answer_order_follows_the_round_when_race_scores_round_alike() -> None:
    """Two racers whose means differ below the recorded 4 decimals (here 0.05704 against 0.05696): the ranking's
    first place is the verdict's leader, not whoever the rounded score and then the norm-only gain put first."""
    rank = RankConfig(strategy="cascade", race_steps=4, race_rounds=1, race_seeds=1, tie_resamples=200)
    rows = [{"name": "k1", "gain": -0.0002}, {"name": "k2", "gain": 0.0068}]  # k2 leads on gain
    stage = StageOne(rows, {}, [1, 0])
    race = Race(alive=[1, 0], costs=Costs({}, {}, None, None))

    def run(v: float) -> RankEntry:
        return RankEntry("x", score=v, steps=4, seconds=1.0, case_scores=[[v, v + 0.001, v - 0.001]])

    close_round(race, stage, rank, 0, {0: [run(0.05704)], 1: [run(0.05696)]}, seed=5, retrained=False)
    assert rows[0]["race_score"] == rows[1]["race_score"] == 0.057
    answer = verdict(stage, race, rank, [], [None, None], {}, 5)
    assert answer["leader"] == "k1"
    assert [rows[i]["name"] for i in rank_order(stage)] == ["k1", "k2"]


def test_a_lone_survivor_of_a_race_is_the_answer_and_is_not_called_apart() -> None:
    """The racer with the larger gain fails to fine-tune: the one that fine-tuned leads the answer and the order alike,
    without a P(best) that no comparison produced."""
    rank = RankConfig(strategy="cascade", race_steps=4, race_rounds=1, race_seeds=1, tie_resamples=200)
    rows = [{"name": "steady", "gain": 0.01}, {"name": "broken", "gain": 0.2}]
    stage = StageOne(rows, {}, [1, 0])
    race = Race(alive=[1, 0], costs=Costs({}, {}, None, None))
    ok = RankEntry("steady", score=0.4, steps=4, seconds=1.0, case_scores=[[0.4, 0.41, 0.39]])
    failed = RankEntry("broken", steps=4, seconds=1.0, status="failed", error="loss is not finite")
    close_round(race, stage, rank, 0, {0: [ok], 1: [failed]}, seed=3, retrained=False)
    assert race.stop == NO_RACE and rows[1]["cut_in_round"] == 1 and race.failed == {1: 1}
    answer = verdict(stage, race, rank, [], [None, None], {}, 3)
    assert answer["leader"] == "steady" and answer["p_best"] is None and not answer["separated"]
    assert answer["tied_group"] == ["steady"] and "broken failed" in answer["evidence"]
    assert "only racer that fine-tuned" in answer["guidance"] and "stands apart" not in answer["guidance"]
    assert [rows[i]["name"] for i in rank_order(stage)] == ["steady", "broken"]


def test_seed_noise_widens_the_bootstrap() -> None:
    rng = np.random.default_rng(0)
    a = np.full((1, 6), 0.60) + rng.normal(0, 0.01, (1, 6))
    b = np.full((1, 6), 0.58) + rng.normal(0, 0.01, (1, 6))
    cases_only = p_best(resampled_means([a, b], 500, np.random.default_rng(1)))
    with_seeds = p_best(resampled_means([a, b], 500, np.random.default_rng(1), [0.05, 0.05]))
    assert cases_only[0] > 0.95 and with_seeds[0] < 0.8
    assert tied_with(resampled_means([a, b], 500, np.random.default_rng(1), [0.05, 0.05]), 0, 0.9) == [1]
    # seeds measured as rows count too: two seeds far apart make the lead uncertain
    a2 = np.vstack([a, a - 0.1])
    assert p_best(resampled_means([a2, b], 500, np.random.default_rng(1)))[0] < 0.9


def _speck_task() -> TaskData:
    """A 2-voxel-wide speck (0.1 % of the volume) beside a large block: hard Dice of the speck starts at 0."""
    rng = np.random.default_rng(3)
    vols = []
    for i in range(4):
        label = np.zeros((20, 20, 20), np.uint8)
        label[2:12, 2:18, 2:18] = 1
        c = 14 + i % 3
        label[c : c + 2, c : c + 2, c : c + 2] = 2
        image = (label == 1) * 1.0 + (label == 2) * 1.5 + rng.normal(0, 0.3, label.shape)
        vols.append(Volume(f"case_{i}", image[None].astype(np.float32), label))
    return TaskData(vols[:-1], vols[-1:], ["background", "block", "speck"])


def test_small_structures_get_soft_dice_a_longer_budget_and_never_all_zero(tmp_path: Path) -> None:
    task = _speck_task()
    share = smallest_foreground_share(task)
    assert share is not None and share < SMALL_SHARE
    config, evidence = small_structure_rule(small_config(max_steps=4), share)
    assert evidence["small"] and config.score == "soft_dice" and config.max_steps == 16  # stretched 4x at most
    big, unchanged = small_structure_rule(small_config(max_steps=4), 0.3)
    assert not unchanged["small"] and big.score == "dice" and big.max_steps == 4
    cands = _candidates(tmp_path, [4, 4])
    scores = [evaluate_candidate(c, task, config).score for c in cands]
    assert all(s is not None and s > 0 for s in scores)
    result = rank_cascade(cands, task, small_config(max_steps=2, score_window=1), _tiny_rank(budget_cap=0.001))
    assert result.cascade["small_structures"]["small"]
    assert all((r["norm_only_score"] or 0) > 0 for r in result.cascade["stages"][0]["rows"])
