"""Benchmark v2's report and decision rule on small synthetic raw results laid out as the runners write them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bench.test_ranking_quality import _module

R = _module("report_v2")
S = _module("v2_strategies")

CANDS = R.candidates()
CONTROLS = R.controls()
# families interleaved in the truth, so ordering by family (the prior) cannot be perfect
TRUTH = {c: 0.9 - 0.01 * i for i, c in enumerate(sorted(CANDS, key=lambda c: (CANDS.index(c) % 8, c)))}
LRS, SEEDS = (0.03, 0.1), (101, 102, 103)


def _sha(name: str) -> str:
    return f"{abs(hash(name)) % 10**12:012d}" + "0" * 52


def _gt(root, task: str, seeds=(1, 2, 3, 4, 5), skip: tuple[str, int] | None = None) -> None:
    rng = np.random.default_rng(0)
    for s in seeds:
        for c, v in TRUTH.items():
            if (c, s) == skip:
                continue
            case = (v + rng.normal(0, 0.002, 3)).tolist()
            point = {"steps": 800, "train_seconds": 100.0, "train_cpu_seconds": 100.0, "per_case": case}
            record = {"candidate": c, "seed": s, "config": {}, "budgets": [point], "weights_sha256": _sha(c)}
            R.rq.dump(root / "ground_truth" / task / c / f"seed{s}.json", record)


def _proxies(root, task: str, seeds=SEEDS, swap: bool = False) -> None:
    hashes = {c: _sha(c) for c in (*CANDS, *CONTROLS)}
    best_first = sorted(CANDS, key=lambda c: -TRUTH[c])
    for k, seed in enumerate(seeds):
        folder = root / "proxies" / task
        for lr in LRS:
            entries = {}
            for c in (*CANDS, *CONTROLS):
                if c in CONTROLS:
                    dice = soft = 0.5 + 0.01 * (int(c[-1]) - 1)  # controls 0.50, 0.51, 0.52 in each family
                elif (lr == 0.1) != swap:  # lr 0.1: hard Dice in the truth's order; soft Dice, the top two swapped
                    dice = TRUTH[c]
                    top2 = sorted(CANDS, key=lambda x: -TRUTH[x])[:2]
                    soft = TRUTH[top2[1 - top2.index(c)]] if c in top2 else TRUTH[c]
                else:  # lr 0.03: the reverse order
                    dice = soft = 0.5 + 0.01 * best_first.index(c)
                curve = [
                    {"step": s, "dice": dice + 0.0001 * k, "score": soft, "seconds": s / 10} for s in range(10, 101, 10)
                ]
                entries[c] = {"status": "ok", "curve": curve, "wall_seconds": 10.5, "cpu_per_wall": 1.0}
            R.rq.dump(
                folder / f"normonly_lr{lr:g}_seed{seed}.json",
                {"entries": entries, "weights_sha256": hashes, "load_cpu_seconds": 1.0},
            )
        logme = {
            c: {"score": TRUTH.get(c, 0.5) if c.startswith("nnunet") else -TRUTH.get(c, 0.5), "cpu_seconds": 0.5}
            for c in (*CANDS, *CONTROLS)
        }
        R.rq.dump(folder / f"logme_b8_seed{seed}.json", {"entries": logme, "weights_sha256": hashes})
        points = {c: [{"dice": TRUTH[c], "train_cpu_seconds": t} for t in (20, 40, 80)] for c in CANDS}
        ft = {c: {"eval_cpu_seconds": 3.0, "budgets": points[c]} for c in CANDS}
        R.rq.dump(folder / f"shortft_seed{seed}.json", {"entries": ft, "weights_sha256": hashes})


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "RESULTS", tmp_path)
    monkeypatch.setattr(R, "param_counts", lambda cands: {c: 2 if c.startswith("u8") else 1 for c in cands})
    return tmp_path


def _rows(text: str, task: str) -> dict[str, str]:
    block = text[text.index(f"TASK {task}:") :]
    block = block[: block.index("\n\n")] if "\n\n" in block else block
    block = block[: block.index("  WITHIN EACH FAMILY")]
    return {
        line[2:44].strip(): line for line in block.splitlines() if line.startswith("  ") and not line.startswith("    ")
    }


def test_complete_tuning_task_applies_the_registered_rule(results):
    _gt(results, "tuning")
    _proxies(results, "tuning")
    text, dec = R.report(boot=20)
    # every setting within the cap that picks the best ties at regret 0; the highest τw wins, then the cheapest:
    # hard Dice at lr 0.1 orders exactly, its 20-step reading is the cheapest; the soft Dice swaps the top two
    assert dec["status"] == "chosen" and dec["chosen"] == "norm_only lr 0.1 20 st dice"
    assert dec["norm_only_alone"] == "norm_only lr 0.1 20 st dice"
    assert "prior_norm_only lr 0.1 20 st dice" in dec["tied"]  # same regret, lower τw (families interleave)
    assert "short_finetune 25 st" not in dec["tied"]  # 20 % of fine-tuning all: over the 10 % cap
    rows = _rows(text, "tuning")
    assert rows["norm_only lr 0.1 20 st dice"].endswith("← CHOSEN ← norm-only alone")
    assert (
        "short_finetune 25 st" in rows
        and "cascade lr 0.1 20 st dice" in rows
        and "prior_race lr 0.1 20 st dice" in rows
    )
    assert (
        "ground truth 75 of 75 runs, proxies 12 of 12 files" in text
        and "INCOMPLETE" not in text.split("TASK ct_fewshot")[0]
    )
    assert rows["norm_only lr 0.03 20 st dice"].split()[7] == "-1.00"  # exactly reversed
    # the short FT point closest in cost to the chosen setting is marked as the equal-cost baseline
    assert rows["short_finetune 25 st"].endswith("← short FT at equal cost")
    assert "DECISION RULE (tuning task): chosen norm_only lr 0.1 20 st dice" in text
    assert "TARGETS" in text and "ct_fewshot: no result yet" in text


def test_targets_are_checked_on_an_evaluation_task_with_the_setting_chosen_on_tuning(results):
    _gt(results, "tuning")
    _proxies(results, "tuning")
    _gt(results, "ct_fewshot")
    _proxies(results, "ct_fewshot", swap=True)  # out of sample the chosen setting orders exactly backwards
    text, _ = R.report(boot=10)
    line = next(x for x in text.splitlines() if x.startswith("  ct_fewshot: regret"))
    assert "≤ every baseline: MISSED (above architecture prior, LogME b8, short FT at equal cost)" in line
    assert "pick in tied group 0.00 (MISSED by 1.00)" in line and "τw -1.00 ≥ max(prior, LogME) + 0.05" in line
    assert "cost 0.026 ≤ 0.1 (met)" in line


def test_partial_results_are_tabled_and_marked_and_the_rule_waits(results):
    _gt(results, "tuning", seeds=(1, 2, 3), skip=("u8_random", 3))
    _proxies(results, "tuning", seeds=(101,))
    text, dec = R.report(boot=20)
    assert dec["status"] == "pending" and "ground truth 44 of 75 runs, proxies 4 of 12 files" in dec["why"]
    assert "TASK tuning: ground truth 44 of 75 runs, proxies 4 of 12 files — INCOMPLETE" in text
    assert "seeds [1, 2] (incomplete: [3])" in text  # seed 3 lacks one candidate: left out of the truth
    rows = _rows(text, "tuning")
    assert rows["norm_only lr 0.1 20 st dice"].split()[6] == "1"  # one proxy seed so far
    assert "TASK ct_fewshot: ground truth 0 of 75 runs, proxies 0 of 12 files — INCOMPLETE" in text
    assert "TARGETS" in text and "pending: no setting chosen yet" in text


def test_report_refuses_runs_of_different_weights_and_names_them(results):
    _gt(results, "tuning")
    _proxies(results, "tuning")
    path = results / "ground_truth" / "tuning" / "nnunet_shapes" / "seed4.json"
    doc = json.loads(path.read_text())
    doc["weights_sha256"] = "f" * 64  # this run was made on another CPU's zoo
    path.write_text(json.dumps(doc))
    with pytest.raises(R.MixedWeights) as err:
        R.report(boot=5)
    msg = str(err.value)
    assert "nnunet_shapes ffffffffffff: ground_truth/tuning/nnunet_shapes/seed4.json" in msg
    assert "ground_truth/tuning/nnunet_shapes/seed1.json" in msg and "and 12 more" in msg  # 4 GT + 12 proxy files
    assert "u8_random" not in msg
    assert R.main(["--bootstrap", "5"]) == 2


def test_halving_race_keeps_the_better_half_until_one_is_left():
    scores = {25: {"a": 0.1, "b": 0.4, "c": 0.3, "d": 0.2}, 50: {"a": 0.0, "b": 0.5, "c": 0.6, "d": 0.0}, 100: {}}
    reached, trained = S.halving_race(["a", "b", "c", "d"], [25, 50, 100], scores)
    assert trained == {"a": 25, "b": 50, "c": 50, "d": 25}  # 4 -> 2 -> 1: nobody runs to 100
    order = S.race_order({k: 0.0 for k in "abcde"}, reached, list("abcde"))
    assert sorted("abcde", key=lambda k: -order["abcde".index(k)]) == ["c", "b", "d", "a", "e"]
    seven = {
        p: {k: v for k, v in zip("abcdefg", np.linspace(0.1, 0.7, 7) * (p / 25), strict=True)} for p in (25, 50, 100)
    }
    _, trained = S.halving_race(list("abcdefg"), [25, 50, 100], seven)
    assert sorted(trained.values()) == [25, 25, 25, 50, 50, 100, 100]  # 7 -> 4 -> 2


def test_cascade_pays_norm_only_controls_and_only_the_race_steps_it_ran():
    cands = ["u8_a", "u8_b", "u8_c", "nnunet_a", "nnunet_b"]
    ctl = ["u8_control_1", "u8_control_2", "nnunet_control_1", "nnunet_control_2"]
    norm = {"u8_a": 0.9, "u8_b": 0.8, "u8_c": 0.1, "nnunet_a": 0.7, "nnunet_b": 0.6, "u8_control_1": 0.1,
            "u8_control_2": 0.3, "nnunet_control_1": 0.5, "nnunet_control_2": 0.5}  # fmt: skip
    runs = S.SeedRuns(seed=101, load_cpu=1.0)
    runs.norm["s"] = norm
    runs.norm_cpu["s"] = {k: 1.0 for k in (*cands, *ctl)}
    runs.ft = {25: {c: 0.5 for c in cands}, 50: {c: 0.5 for c in cands}, 100: {c: 0.5 for c in cands}}
    runs.ft_cpu = {25: {c: 10.0 for c in cands}, 50: {c: 20.0 for c in cands}, 100: {c: 40.0 for c in cands}}
    got = S.strategy_orders(runs, cands, prior={c: 1.0 if c.startswith("u8") else 0.0 for c in cands})
    gain = got["gain_over_controls s"]
    assert gain.scores == pytest.approx([0.7, 0.6, -0.1, 0.2, 0.1]) and gain.cpu == 1 + 5 + 4
    assert gain.flagged == ["u8_c"]  # |gain| within 2 control s.d. (u8 floor 0.28; nnunet controls agree: 0)
    # 4 racers (top 2 per family by gain) to 25 steps, 2 of them on to 50: 2 x 10 + 2 x 20 CPU s of race
    assert got["cascade s"].cpu == 1 + 5 + 4 + 2 * 10 + 2 * 20
    assert got["norm_only s"].cpu == 6 and got["short_finetune 100 st"].cpu == 1 + 5 * 40
    # the prior's family (u8, 3 members) races 3 -> 2 -> 1; the other family is paid for its norm-only runs only
    assert got["prior_race s"].cpu == 1 + 2 * 1 + (10 + 2 * 20)


def test_the_rule_ties_within_a_quarter_sd_and_breaks_by_tau_then_cost():
    m = {
        "a": {"regret_sd": 0.0, "wtau": 0.5, "cost": 0.05},
        "b": {"regret_sd": 0.2, "wtau": 0.9, "cost": 0.08},
        "c": {"regret_sd": 0.2, "wtau": 0.9, "cost": 0.02},
        "d": {"regret_sd": 0.0, "wtau": 1.0, "cost": 0.5},  # over the cap
        "e": {"regret_sd": 0.3, "wtau": 1.0, "cost": 0.01},  # outside the tie
    }
    got = S.decide(m)
    assert got["chosen"] == "c" and got["tied"] == ["a", "b", "c"] and got["eligible"] == 4
    assert S.decide({"d": m["d"]}) is None


def test_proxy_variants_order_halving_survivors_first_and_failures_last():
    P = _module("proxy_variants")
    entries = {
        "a": {"status": "ok", "hard_dice": 0.9, "halving_round": 1},  # best Dice, but cut in round 1
        "b": {"status": "ok", "hard_dice": 0.5, "halving_round": 3},
        "c": {"status": "ok", "hard_dice": 0.6, "halving_round": 3},
        "d": {"status": "failed", "hard_dice": None, "halving_round": 1},
    }
    s = P.scores({"entries": entries}, list("abcd"))
    assert sorted("abcd", key=lambda k: -s["abcd".index(k)]) == ["c", "b", "a", "d"]
    plain = {k: {**v, "halving_round": None} for k, v in entries.items()}
    s = P.scores({"entries": plain}, list("abcd"))
    assert sorted("abcd", key=lambda k: -s["abcd".index(k)]) == ["a", "c", "b", "d"]


def test_a_setting_label_reads_as_the_engines_strategy_and_budget():
    assert S.engine_setting("norm_only lr 0.1 50 st soft_dice") == (
        "norm_only",
        {"lr": 0.1, "max_steps": 50, "score": "soft_dice", "score_window": 1, "validation": "whole"},
    )
    assert S.engine_setting("cascade lr 0.03 20 st dice")[0] == "cascade"
    assert S.engine_setting("short_finetune 25 st") == ("short_finetune", {})
    with pytest.raises(ValueError, match="LogME"):
        S.engine_setting("LogME b8")


def test_costs_are_read_on_the_machine_class_that_made_most_of_the_ground_truth(results):
    """A slower machine's ground-truth seed and proxy file change no cost; their scores still count."""
    _gt(results, "tuning")
    _proxies(results, "tuning")
    text, _ = R.report(boot=20)
    cost = float(_rows(text, "tuning")["norm_only lr 0.1 20 st dice"].split("←")[0].split()[-1])
    slow = {"machine": {"cpu": "slow", "precision": "fp32"}}
    for path in (results / "ground_truth" / "tuning").glob("*/seed5.json"):
        record = R.rq.load(path)
        record["budgets"][0]["train_cpu_seconds"] *= 7
        R.rq.dump(path, {**record, **slow})
    path = results / "proxies" / "tuning" / "normonly_lr0.1_seed101.json"
    doc = R.rq.load(path)
    for e in doc["entries"].values():
        e["wall_seconds"] *= 7
        e["curve"] = [{**p, "seconds": p["seconds"] * 7} for p in e["curve"]]
    R.rq.dump(path, {**doc, **slow})
    text, dec = R.report(boot=20)
    row = _rows(text, "tuning")["norm_only lr 0.1 20 st dice"]
    assert float(row.split("←")[0].split()[-1]) == pytest.approx(cost)
    assert dec["chosen"] == "norm_only lr 0.1 20 st dice"
    assert "ground-truth runs by class: unrecorded × 60, slow, fp32 × 15; costs (× FT) are read on unrecorded" in text
    assert "slow, fp32: Δ test Dice vs the same candidates there" in text and "n 15)" in text


def test_a_rebased_controls_seconds_are_its_familys_other_controls(results):
    st = R._peer_cpu(
        {"u8_control_81": 70.0, "u8_control_82": 10.0, "u8_control_83": 12.0, "u8_random": 9.0}, {"u8_control_81"}
    )
    assert st["u8_control_81"] == 11.0 and st["u8_random"] == 9.0


def _check(root, here_bits: float, ratio: float) -> None:
    """A machine check as bench/v2_machine_check.py writes it: one committed run of "run abc" rerun on "xeon"."""
    run = {
        "candidate": "u8_random",
        "seed": 1,
        "here": 0.8 + here_bits,
        "committed": 0.8,
        "committed_class": "run abc",
        "here_train_cpu_seconds": 100.0 * ratio,
        "committed_train_cpu_seconds": 100.0,
    }
    R.rq.dump(
        root / "checks" / "tuning_bf16_u8_randoms1.json",
        {"machine": {"cpu": "xeon", "precision": "bf16"}, "runs": [run]},
    )


def test_two_names_of_one_machine_count_as_one_class_only_when_a_check_reproduced_its_runs(results):
    """Older runs name their machine by the run's commit; a check that reproduced them bit for bit at the same speed
    joins that name to the machine's record, so proxy files made under the old name keep their costs."""
    _gt(results, "tuning")
    _proxies(results, "tuning")
    for path in (results / "ground_truth" / "tuning").glob("*/seed*.json"):
        record = R.rq.load(path)
        old = record["seed"] <= 2
        R.rq.dump(path, {**record, **({"code": "abc"} if old else {"machine": {"cpu": "xeon", "precision": "bf16"}})})
    for path in (results / "proxies" / "tuning").glob("*.json"):
        R.rq.dump(path, {**R.rq.load(path), "code": "abc"})

    def cost_and_text() -> tuple[float, str]:
        text, _ = R.report(boot=20)
        return float(_rows(text, "tuning")["norm_only lr 0.1 20 st dice"].split("←")[0].split()[-1]), text

    assert np.isnan(cost_and_text()[0])  # the proxies' class made no ground truth here: no cost without the check
    _check(results, here_bits=1e-9, ratio=1.0)  # not the same bits: another precision or kernel
    assert R.same_classes(results) == {}
    _check(results, here_bits=0.0, ratio=1.6)  # the same bits, but not the same speed
    assert R.same_classes(results) == {}
    _check(results, here_bits=0.0, ratio=0.9)
    assert R.same_classes(results) == {"xeon, bf16": "run abc"}
    value, text = cost_and_text()
    assert (
        value > 0
        and "ground-truth runs by class: run abc × 75; costs (× FT) are read on run abc only (with xeon" in text
    )
