"""The benchmark's statistics and its report, on tiny hand-made results (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


qs = _module("quality_stats")


def test_wtau_is_one_for_the_same_order_and_nan_for_no_order():
    assert qs.wtau([3, 2, 1], [0.9, 0.5, 0.1]) == pytest.approx(1.0)
    assert qs.wtau([1, 2, 3], [0.9, 0.5, 0.1]) == pytest.approx(-1.0)
    assert math.isnan(qs.wtau([0, 0, 0], [0.9, 0.5, 0.1]))


def test_a_swap_at_the_top_costs_more_than_one_at_the_bottom():
    truth = [5, 4, 3, 2, 1]
    assert qs.wtau([4, 5, 3, 2, 1], truth) < qs.wtau([5, 4, 3, 1, 2], truth)


def test_top1_in_top2():
    assert qs.top1_in_top([0.1, 0.9, 0.2], [0.8, 0.9, 0.1])
    assert not qs.top1_in_top([0.1, 0.2, 0.9], [0.8, 0.9, 0.1])


def test_loso_ceiling_compares_each_seed_with_the_mean_of_the_others():
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    values = qs.loso(scores)
    # seed 0 against the mean of seeds 1 and 2 = [3, 1.5, 1.5]; seed 1 against [3, 2, 1]
    assert values[0] == pytest.approx(qs.wtau([3, 2, 1], [3, 1.5, 1.5]))
    assert values[1] == pytest.approx(qs.wtau([3, 1, 2], [3, 2, 1]))
    gt = scores[:, :, None]  # one test case
    assert qs.ceiling(gt) == pytest.approx(np.mean(values))


def test_bootstrap_interval_contains_the_point_and_is_degenerate_without_noise():
    rng = np.random.default_rng(0)
    truth = np.array([0.8, 0.6, 0.4, 0.2])
    noisy = truth[None, :, None] + rng.normal(0, 0.1, (5, 4, 6))
    b = qs.bootstrap(noisy, {"good": truth, "bad": truth[::-1]}, n=200)
    for name in ("good", "bad", "ceiling"):
        assert b[name]["lo"] <= b[name]["hi"]
    assert b["good"]["value"] > b["bad"]["value"]
    exact = np.repeat(truth[None, :, None], 5, axis=0).repeat(3, axis=2)
    b = qs.bootstrap(exact, {"good": truth}, n=50)
    assert b["good"] == {"value": pytest.approx(1.0), "lo": pytest.approx(1.0), "hi": pytest.approx(1.0)}
    assert b["ceiling"]["value"] == pytest.approx(1.0)


def _curve(values, every=10, secs=1.0):
    return [{"step": every * (i + 1), "dice": v, "seconds": secs * (i + 1)} for i, v in enumerate(values)]


def test_prefix_setting_reads_scores_and_seconds_off_the_curve():
    curves = {"a": _curve([0.1, 0.2, 0.3, 0.4]), "b": _curve([0.5, 0.5, 0.1, 0.1])}
    scores, seconds = qs.prefix_setting(curves, {"a": 0.5, "b": 0.5}, 20, window=1)
    assert scores == {"a": 0.2, "b": 0.5}
    assert seconds == pytest.approx(2 + 2 + 1)
    scores, _ = qs.prefix_setting(curves, {}, 40, window=3)
    assert scores["a"] == pytest.approx(0.3) and scores["b"] == pytest.approx(0.7 / 3)


def test_halving_stops_the_worse_half_and_counts_only_steps_run():
    curves = {
        "a": _curve([0.1, 0.9, 0.9, 0.9]),
        "b": _curve([0.5, 0.5, 0.5, 0.2]),
        "c": _curve([0.4, 0.4, 0.4, 0.4]),
        "d": _curve([0.0, 0.0, 0.0, 0.0]),
    }
    scores, seconds, stopped = qs.halving(curves, {}, first=10, max_steps=40, window=1)
    # round 1 at 10 steps: b, c go on; round 2 at 20: b (0.5) beats c (0.4); round 3 at 40: b alone
    assert stopped == {"a": 1, "d": 1, "c": 2, "b": 3}
    assert max(scores, key=scores.get) == "b"
    assert scores["c"] > scores["a"] and scores["a"] > scores["d"]
    assert seconds == pytest.approx(1 + 1 + 2 + 4)


def test_report_and_tune_from_fixture_files(tmp_path, monkeypatch):
    rq = _module("ranking_quality")
    results = tmp_path / "results"
    monkeypatch.setattr(rq, "RESULTS", results)
    monkeypatch.setattr(rq, "PREREGISTRATION", tmp_path / "preregistration.json")
    monkeypatch.setattr(rq, "GT", rq.GTConfig(budgets=(10, 20), seeds=(1, 2, 3)))
    cands = ["good", "mid", "bad"]
    truth = {"good": 0.8, "mid": 0.5, "bad": 0.2}
    rng = np.random.default_rng(1)
    for seed in (1, 2, 3):
        for c in cands:
            budgets = []
            for steps in (10, 20):
                per_case = (truth[c] * steps / 20 + rng.normal(0, 0.02, 4)).tolist()
                budgets.append({"steps": steps, "train_seconds": steps * 1.0, "per_case": per_case})
            rq.dump(
                results / "ground_truth" / "tuning" / c / f"seed{seed}.json",
                {"candidate": c, "seed": seed, "config": {}, "budgets": budgets},
            )
    entries = {
        c: {"curve": _curve([truth[c] * 0.5] * 10, secs=0.01), "overhead": 0.0, "score": truth[c]} for c in cands
    }
    rq.dump(
        results / "proxies" / "tuning" / "bnonly_lr0.1_100.json",
        {"method": "bnonly", "lr": 0.1, "max_steps": 100, "extra": {}, "entries": entries},
    )
    logme = {c: {"score": -truth[c], "seconds": 0.1} for c in cands}
    rq.dump(results / "proxies" / "tuning" / "logme_b8.json", {"method": "logme", "batches": 8, "entries": logme})
    rq.dump(results / "zoo.json", {"keys": {c: "k" for c in cands}, "candidates": {}})

    gt = rq.read_gt("tuning")
    assert gt["candidates"] == sorted(cands) and gt["seeds"] == [1, 2, 3] and gt["gt"][20].shape == (3, 3, 4)
    rq.run_tune()
    prereg = json.loads((tmp_path / "preregistration.json").read_text())
    assert prereg["setting"]["method"] == "bnonly" and prereg["on_tuning"]["wtau"] == pytest.approx(1.0)
    assert prereg["setting"]["steps"] == 20  # tied on τ, the cheapest wins
    text = rq.report(boot=50)
    assert "TASK tuning" in text and "pre-registered" in text and "logme b8" in text
    assert "ceiling (leave-one-seed-out τw)" in text
    baselines = text[text.index("BASELINES AND CASCADES tuning") :]
    assert "random pick" in baselines and "norm-only (pre-registered)" in baselines and "LogME" in baselines
    # what the fixture's raw files cannot give is named, not silently dropped
    assert "short fine-tuning (no 80-step ground-truth point)" in baselines
    assert "parameter count (no results/params.json" in baselines
    assert "PROXY NOISE" not in text  # one proxy seed: no noise line
    # A second proxy seed that orders the candidates the other way: the proxy's own seed-to-seed agreement
    # shows it, and the interval over proxy seeds widens to include the reversed order.
    reversed_entries = {
        c: {"curve": _curve([1 - truth[c] * 0.5] * 10, secs=0.01), "overhead": 0.0, "score": 1 - truth[c]}
        for c in cands
    }
    rq.dump(
        results / "proxies" / "tuning" / "seed7" / "bnonly_lr0.1_100.json",
        {"method": "bnonly", "lr": 0.1, "max_steps": 100, "extra": {}, "entries": reversed_entries},
    )
    rq.dump(
        results / "proxies" / "tuning" / "seed7" / "logme_b8.json", {"method": "logme", "batches": 8, "entries": logme}
    )
    noise = rq.report(boot=50).split("PROXY NOISE tuning")[1].split("\n\n")[0]
    setting = next(line for line in noise.splitlines() if line.strip().startswith(prereg["setting_id"]))
    assert "seeds [0, 7]" in setting and "seed-to-seed τw -1.00" in setting
    assert "logme b8 at seeds [0, 7]" in noise and "seed-to-seed τw 1.00" in noise
    with pytest.raises(SystemExit, match="ground-truth seed"):
        rq.main(["--proxies", "tuning", "--proxy-seed", "2", "--cache", str(tmp_path / "cache")])
    # An evaluation task's ground truth exists: tuning again is refused.
    (results / "ground_truth" / "ct_head").mkdir(parents=True)
    with pytest.raises(SystemExit):
        rq.run_tune()


def test_engine_options_read_the_score_window_and_halving():
    setting = {"method": "bnonly", "lr": 0.1, "steps": 100, "score": "soft_dice3", "halving": 25, "extra": {}}
    train, rank = qs.engine_options(setting)
    assert train == {"lr": 0.1, "max_steps": 100, "score": "soft_dice", "score_window": 3}
    assert rank == {"halving_rounds": 3, "halving_eta": 2}
    with pytest.raises(ValueError, match="logme"):
        qs.engine_options({"method": "logme", "batches": 4})


def test_verify_trials_count_false_alarms_and_misses():
    proxy = [0.9, 0.8, 0.5, 0.1]  # the proxy's order: 0, 1, 2, 3; verify with k=1 checks 0 and 3
    truth = [0.95, 0.9, 0.7, 0.2]  # right about 0 above 3
    seeds = np.array([[0.9, 0.8, 0.7, 0.3], [0.2, 0.8, 0.7, 0.3], [0.9, 0.1, 0.7, 0.3]])
    out = qs.verify_trials(proxy, truth, seeds, k=1)
    assert out == {
        "runs": 3,
        "right": 3,
        "false_alarms": 1,  # the second seed puts 3 above 0
        "misses": 0,
        "top1_right": 3,
        "top1_false_alarms": 1,
    }
    # k=2 adds candidate 1: the third seed now breaks the order too; a wrong truth turns "yes" into misses
    assert qs.verify_trials(proxy, truth, seeds, k=2)["false_alarms"] == 2
    wrong = qs.verify_trials(proxy, [0.1, 0.9, 0.7, 0.2], seeds, k=1)
    assert (wrong["right"], wrong["false_alarms"], wrong["misses"]) == (0, 0, 2)


def test_verify_trials_with_the_verify_seed_held_out_of_the_truth():
    proxy = [0.9, 0.8, 0.1]  # verify with k=1 checks candidates 0 and 2... and k=2 adds 1
    converged = np.array([[0.9, 0.5, 0.1], [0.5, 0.9, 0.1], [0.5, 0.9, 0.1], [0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    held = qs.held_out_truths(converged)
    assert held[0] == pytest.approx(converged[1:].mean(axis=0))
    assert held[3] == pytest.approx(np.delete(converged, 3, axis=0).mean(axis=0))
    # In sample the truth ranks 0 above 1 (0.74 vs 0.66): seeds 1 and 2 disagree with it -> 2 false alarms.
    in_sample = qs.verify_trials(proxy, converged.mean(axis=0), converged, k=2)
    assert (in_sample["right"], in_sample["false_alarms"], in_sample["misses"]) == (5, 2, 0)
    # Held out, a seed that ranks 0 first is judged by truths that lean less its way: seeds 0, 3 and 4 are each
    # judged against a truth with 0 and 1 at 0.7 (a tie is not concordant: "order wrong"), and they say
    # "agrees": 3 misses; seeds 1 and 2 are judged against 0 ahead (0.8 vs 0.6) and say "no": 2 false alarms.
    out = qs.verify_trials(proxy, held, converged, k=2)
    assert (out["runs"], out["right"], out["false_alarms"], out["misses"]) == (5, 2, 2, 3)


def test_spearman_is_nan_for_a_constant_figure():
    assert math.isnan(qs.spearman([0.0, 0.0, 0.0], [0.1, 0.5, 0.9]))
    assert qs.spearman([1, 2, 3], [0.1, 0.5, 0.9]) == pytest.approx(1.0)


def _write_gt(rq, results: Path, task: str, truth: dict[str, float], seed_noise: float = 0.02) -> None:
    rng = np.random.default_rng(2)
    for seed in (1, 2, 3):
        for c, value in truth.items():
            budgets = [
                {
                    "steps": steps,
                    "train_seconds": steps * 1.0,
                    "per_case": (value + rng.normal(0, seed_noise, 4)).tolist(),
                }
                for steps in (10, 20)
            ]
            rq.dump(
                results / "ground_truth" / task / c / f"seed{seed}.json",
                {"candidate": c, "seed": seed, "config": {}, "budgets": budgets},
            )


def _write_proxies(rq, folder: Path, truth: dict[str, float]) -> None:
    entries = {c: {"curve": _curve([v * 0.5] * 10, secs=0.01), "overhead": 0.0, "score": v} for c, v in truth.items()}
    rq.dump(
        folder / "bnonly_lr0.1_100.json",
        {"method": "bnonly", "lr": 0.1, "max_steps": 100, "extra": {}, "entries": entries},
    )
    logme = {c: {"score": -v, "seconds": 0.1} for c, v in truth.items()}
    rq.dump(folder / "logme_b8.json", {"method": "logme", "batches": 8, "entries": logme})


def test_report_builds_the_norm_only_pool_table_beside_unchanged_headline_tables(tmp_path, monkeypatch):
    """Issue 11, item 5: extension candidates' runs sit beside the pre-registered pool's; the headline tables
    stay over the pre-registered candidates and a separate table pools both (and the extension alone)."""
    rq = _module("ranking_quality")
    results = tmp_path / "results"
    monkeypatch.setattr(rq, "RESULTS", results)
    monkeypatch.setattr(rq, "PREREGISTRATION", tmp_path / "preregistration.json")
    monkeypatch.setattr(rq, "GT", rq.GTConfig(budgets=(10, 20), seeds=(1, 2, 3)))
    headline = {"good": 0.8, "mid": 0.5, "bad": 0.2}
    extension = {"nnunet_a": 0.9, "nnunet_b": 0.6, "nnunet_c": 0.3}
    _write_gt(rq, results, "tuning", headline)
    _write_proxies(rq, results / "proxies" / "tuning", headline)
    rq.dump(results / "zoo.json", {"keys": {c: "k" for c in headline}, "candidates": {}})
    rq.dump(results / "tasks.json", {"tuning": {"evaluation": False}, "ct_head": {"evaluation": True}})
    rq.run_tune()
    _write_gt(rq, results, "ct_head", {**headline, **extension})
    _write_proxies(rq, results / "proxies" / "ct_head", headline)
    text = rq.report(boot=20)
    assert "TASK ct_head: 3 candidates" in text  # the headline task table ignores the extension's ground truth
    assert "NORM-ONLY POOL" not in text  # no extension pool declared yet
    assert rq.read_gt("ct_head")["candidates"] == sorted(headline)
    assert rq.read_gt("ct_head", [*headline, *extension])["candidates"] == sorted([*headline, *extension])

    rq.dump(results / "zoo_extension.json", {"keys": {c: "k" for c in extension}, "candidates": {}})
    text = rq.report(boot=20)
    assert "TASK ct_head: 3 candidates" in text
    pooled = next(line for line in text.splitlines() if line.startswith("ct_head      3 + nnU-Net"))
    assert "no pre-registered proxy run for every candidate" in pooled  # extension proxies not run yet

    _write_proxies(rq, results / "proxies" / "ct_head" / rq.EXTENSION_DIR, extension)
    text = rq.report(boot=20)
    lines = text.splitlines()
    pooled = next(line for line in lines if line.startswith("ct_head      3 + nnU-Net"))
    alone = next(line for line in lines if line.startswith("ct_head      nnU-Net only"))
    # The proxy orders all six as their ground truth does (τw 1.00; LogME, negated, -1.00); top-1 is nnunet_a.
    assert pooled.split()[4:7] == ["6", "3", "1.00"] and "-1.00" in pooled and " yes " in pooled
    assert alone.split()[3:6] == ["3", "3", "1.00"]
    assert re.search(r"nnunet_a\s+GT 0\.(89|90|91)\d ± 0\.\d+ \(# 1 of 6\), norm-only score 0\.450 \(# 1\)", text)
    assert "pooled GT top-1 nnunet_a, norm-only top-1 nnunet_a" in text
    headline_task = text.split("TASK ct_head")[1].split("\n\n")[0]
    assert "nnunet" not in headline_task


def test_extension_proxies_refuse_candidates_outside_the_extension_pool(tmp_path):
    rq = _module("ranking_quality")
    with pytest.raises(SystemExit, match="extension pool"):
        rq.run_proxies("ct_head", tmp_path, {}, only=["u8_random"])
    with pytest.raises(SystemExit, match="not on tuning"):
        rq.run_proxies("tuning", tmp_path, {}, only=["nnunet_random"])


def test_cpu_up_to_a_step_is_the_runs_cpu_shared_by_wall_time_and_a_paused_stretch_takes_no_share():
    """Validations every 10 steps, 2 s apart, 1 s of tail; CPU 20 s over 21 s of wall."""
    curve = [{"step": s, "seconds": 0.2 * s} for s in range(10, 110, 10)]
    run = {"curve": curve, "wall_seconds": 21.0, "cpu_seconds": 20.0}
    assert qs.cpu_at(run, 50) == pytest.approx(20.0 * 11 / 21)  # as (clock at step 50 + tail) × CPU per wall second
    assert qs.cpu_at(run, 100) == pytest.approx(20.0)
    # the same run, stopped for an hour before its first validation: the hour is wall time, not CPU
    paused = {
        "curve": [{"step": p["step"], "seconds": p["seconds"] + 3600} for p in curve],
        "wall_seconds": 3621.0,
        "cpu_seconds": 20.0,
    }
    assert qs.cpu_at(paused, 50) == pytest.approx(qs.cpu_at(run, 50))
    assert qs.cpu_at(paused, 100) == pytest.approx(20.0)


def test_the_pause_scan_names_the_stopped_stretch_of_a_result_file_and_passes_a_steady_one(tmp_path, capsys):
    """One entry stopped for a minute before step 60, one steady, nested as the proxy files nest them."""
    scan = _module("scan_pauses")
    steady = [{"step": s, "seconds": 0.2 * s} for s in range(10, 110, 10)]
    stopped = [{"step": p["step"], "seconds": p["seconds"] + (60.0 if p["step"] >= 60 else 0.0)} for p in steady]
    assert qs.paused_stretches(steady) == []
    assert qs.paused_stretches(stopped) == [(60, pytest.approx(62.0))]
    doc = {"variants": {"norm-only": {"entries": {"a": {"curve": steady}, "b": {"curve": stopped}}}}}
    (tmp_path / "run.json").write_text(json.dumps(doc))
    seen, rows = scan.scan([tmp_path])
    assert seen == 2 and [(r["entry"], r["paused"]) for r in rows] == [("/variants/norm-only/entries/b", [(60, 62.0)])]
    assert scan.main([str(tmp_path)]) == 0
    assert "2 timed curves; 1 with a stretch over 4x" in capsys.readouterr().out
