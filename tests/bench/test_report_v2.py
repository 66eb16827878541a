"""Benchmark v2's report on hand-made raw results laid out as the runners write them (no training)."""

from __future__ import annotations

import numpy as np

from tests.bench.test_ranking_quality import _module

R = _module("report_v2")

TRUTH = {"u8_brain_t1": 0.9, "u8_random": 0.8, "nnunet_brain_t1": 0.7, "nnunet_random": 0.6}


def _write(root, task: str, proxy_order: list[float], seeds=(1, 2, 3)) -> None:
    rng = np.random.default_rng(0)
    for s in seeds:
        for c, v in TRUTH.items():
            point = {
                "steps": 800,
                "train_seconds": 10.0,
                "train_cpu_seconds": 10.0,
                "per_case": (v + rng.normal(0, 0.005, 4)).tolist(),
            }
            R.rq.dump(
                root / "ground_truth" / task / c / f"seed{s}.json",
                {"candidate": c, "seed": s, "config": {}, "budgets": [point]},
            )
    cands = list(TRUTH)
    for k, seed in enumerate((101, 102, 103)):
        norm = {
            c: {
                "status": "ok",
                "wall_seconds": 1.0,
                "cpu_per_wall": 1.0,
                "curve": [
                    {"step": st, "dice": proxy_order[i] + 0.01 * k, "score": proxy_order[i], "seconds": st / 100}
                    for st in range(10, 101, 10)
                ],
            }
            for i, c in enumerate(cands)
        }
        R.rq.dump(root / "proxies" / task / f"normonly_lr0.03_seed{seed}.json", {"entries": norm})
        logme = {c: {"score": -proxy_order[i], "cpu_seconds": 0.1} for i, c in enumerate(cands)}
        R.rq.dump(root / "proxies" / task / f"logme_b8_seed{seed}.json", {"entries": logme})
        ft = {
            c: {"eval_seconds": 0.3, "budgets": [{"dice": TRUTH[c], "train_cpu_seconds": t} for t in (1, 2, 4)]}
            for c in cands
        }
        R.rq.dump(root / "proxies" / task / f"shortft_seed{seed}.json", {"entries": ft})


def test_report_reads_the_runs_and_judges_each_proxy_over_its_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "RESULTS", tmp_path)
    _write(tmp_path, "tuning", [4, 3, 2, 1])
    _write(tmp_path, "ct_fewshot", [1, 2, 3, 4])  # norm-only exactly reversed on this task
    text = R.report(boot=50)
    ct = text[text.index("TASK ct_fewshot") :]
    ct = ct[: ct.index("\n\n")]
    rows = {line[:34].strip(): line for line in ct.splitlines()}
    # the prior knows families only: it ties u8_brain_t1 with u8_random (expected regret 0.05, half in the group)
    prior = rows["architecture prior"].split()
    assert prior[2] == "0.82" and prior[5] == "0.050" and prior[-3] == "0.50"
    norm = rows["norm-only lr 0.03 20 st dice"].split()
    assert norm[6] == "-1.00" and norm[9] == "0.302" and norm[-3] == "0.00"  # picks the worst, outside the group
    assert rows["short FT 25 st"].split()[4] == "1.00"
    assert "(IN SAMPLE)" in text[text.index("TASK tuning") : text.index("TASK ct_fewshot")]
    assert "LogME b8" in rows and "random pick (expected)" in rows
    assert "WITHIN EACH FAMILY ct_fewshot" in ct
    assert "TASK real_brain: fewer than 2 complete ground-truth seeds yet" in text
