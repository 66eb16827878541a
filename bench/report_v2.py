"""Benchmark v2's tables from its raw JSON (bench/results/v2/): what has landed, measured as registered.

Per task with ground truth (≥ 2 complete seeds): the ground truth per candidate, its ceiling, its tied top
group; every registered proxy setting at its three proxy seeds (τw and top-1 regret with 95 % intervals over
GT seeds, proxy seeds and test cases; the proxy's own seed-to-seed agreement; cost as a share of
fine-tuning every candidate, loading and preprocessing included) beside the data-free baselines; and the same
within each family. The registered strategies and the decision rule (bench/preregistration_v2.json) are
applied by the next step's report, not here.

    python bench/report_v2.py [--bootstrap N]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import baseline_stats as bs  # noqa: E402
import quality_stats as qs  # noqa: E402
import ranking_quality as rq  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "v2"
PREREGISTRATION = ROOT / "bench" / "preregistration_v2.json"


def family_of(name: str) -> str:
    return "nnunet" if name.startswith("nnunet") else "unet3d"


def proxy_table(task: str, cands: list[str]) -> dict[str, dict[str, Any]]:
    """{setting: {scores [proxy seeds, cands], cpu (mean over proxy seeds, all candidates)}} off the raw runs.

    Norm-only settings are read off the 100-step runs (constant lr, so 20 and 50 steps are prefixes): hard
    Dice (``dice``) and the configured soft Dice (``score``) of the last validation up to that step."""
    prereg = rq.load(PREREGISTRATION)["proxies"]
    folder = RESULTS / "proxies" / task
    out: dict[str, dict[str, Any]] = {}

    def add(key: str, seed_scores: list[list[float]], cpu: list[float]) -> None:
        if seed_scores:
            out[key] = {"scores": np.asarray(seed_scores, float), "cpu": float(np.mean(cpu))}

    rows, cpu = [], []
    for s in prereg["seeds"]:
        path = folder / f"logme_b{prereg['logme']['batches']}_seed{s}.json"
        if path.is_file() and all(c in rq.load(path)["entries"] for c in cands):
            e = rq.load(path)["entries"]
            rows.append(qs.failed_last([e[c]["score"] for c in cands]))
            cpu.append(sum(e[c]["cpu_seconds"] for c in cands))
    add(f"LogME b{prereg['logme']['batches']}", rows, cpu)
    for lr in prereg["norm_only"]["lrs"]:
        runs = [folder / f"normonly_lr{lr:g}_seed{s}.json" for s in prereg["seeds"]]
        runs = [rq.load(p)["entries"] for p in runs if p.is_file()]
        runs = [e for e in runs if all(c in e and e[c]["status"] == "ok" for c in cands)]
        for steps in prereg["norm_only"]["steps"]:
            for key, label in (("dice", "dice"), ("score", "soft_dice")):
                rows = [[qs.windowed(e[c]["curve"], steps, key, 1) for c in cands] for e in runs]
                cpu = [
                    sum(
                        (qs.seconds_at(e[c]["curve"], steps) + e[c]["wall_seconds"] - e[c]["curve"][-1]["seconds"])
                        * e[c]["cpu_per_wall"]
                        for c in cands
                    )
                    for e in runs
                ]
                add(f"norm-only lr {lr:g} {steps} st {label}", rows, cpu)
    runs = [folder / f"shortft_seed{s}.json" for s in prereg["seeds"]]
    runs = [rq.load(p)["entries"] for p in runs if p.is_file()]
    runs = [e for e in runs if all(c in e for c in cands)]
    for i, steps in enumerate(prereg["short_finetune"]["steps"]):
        rows = [[e[c]["budgets"][i]["dice"] for c in cands] for e in runs]
        cpu = [
            sum(
                e[c]["budgets"][i]["train_cpu_seconds"]
                + e[c].get("eval_cpu_seconds", e[c]["eval_seconds"]) * (i + 1) / len(e[c]["budgets"])
                for c in cands
            )
            for e in runs
        ]
        add(f"short FT {steps} st", rows, cpu)
    return out


def report_task(task: str, tuning_gt: dict[str, Any] | None, boot: int, tuning: str = "tuning") -> list[str]:
    gt = rq.read_gt(task, candidates=candidates(), root=RESULTS)
    if gt is None or len(gt["seeds"]) < 2:
        return [f"TASK {task}: fewer than 2 complete ground-truth seeds yet"]
    cands, conv = gt["candidates"], gt["gt"][gt["budgets"][-1]]
    mean, sd = qs.gt_mean(conv), bs.seed_sd(conv)
    group = bs.tied_top_group(conv, n=boot)
    tasks = rq.load(RESULTS / "tasks.json") if (RESULTS / "tasks.json").is_file() else {}
    load_cpu = float(tasks.get(task, {}).get("load_cpu_seconds", 0.0))
    ft_all = float(gt["train_seconds"].mean(axis=0).sum()) + load_cpu
    lines = [
        f"TASK {task} (v2): {len(cands)} candidates, seeds {gt['seeds']}"
        + (f" (incomplete: {gt['incomplete_seeds']})" if gt["incomplete_seeds"] else "")
        + f"; GT = test Dice after {gt['budgets'][-1]} steps; ceiling {rq.f2(qs.ceiling(conv))}; seed s.d. "
        f"{sd:.4f}; tied top group: {', '.join(cands[i] for i in group)}; fine-tuning all: {ft_all:.0f} CPU s",
    ]
    for i in np.argsort(-mean):
        s = qs.seed_scores(conv)[:, i]
        lines.append(f"  {cands[i]:<24} {family_of(cands[i]):<7} {s.mean():.3f} ± {s.std():.3f}")
    lines.append(
        f"{'order':<34} {'τw [95% CI]':<22} {'regret [95% CI]':<22} {'/ sd':>5} {'in tied':>7} "
        f"{'self τw':>7} {'× FT':>7}"
    )
    rows: list[tuple[str, np.ndarray, float]] = []
    if tuning_gt is not None:
        tmean = dict(zip(tuning_gt["candidates"], qs.gt_mean(tuning_gt["gt"][tuning_gt["budgets"][-1]]), strict=True))
        fam = {c: family_of(c) for c in (*cands, *tmean)}
        prior = bs.architecture_prior(tmean, fam, cands)
        rows.append(("architecture prior" + (" (IN SAMPLE)" if task == tuning else ""), np.array([prior]), 0.0))
    rows += [(k, v["scores"], v["cpu"]) for k, v in proxy_table(task, cands).items()]
    r = bs.random_pick(mean, group)
    lines.append(
        f"{'random pick (expected)':<34} {rq.f2(r['wtau']):<22} {r['regret']:<22.3f} {r['regret'] / sd:5.1f} "
        f"{r['in_group']:7.2f} {'':>7} {0:7.3f}"
    )
    for label, scores, cpu in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            b = bs.bootstrap_proxy_seeds(conv, scores, n=boot)
        w, g = b["wtau"], b["regret"]
        lines.append(
            f"{label:<34} {rq.f2(w['value']):>5} [{rq.f2(w['lo'])}, {rq.f2(w['hi'])}]".ljust(57)
            + f" {g['value']:.3f} [{g['lo']:.3f}, {g['hi']:.3f}]".ljust(23)
            + f" {g['value'] / sd:5.1f} {bs.in_group(scores.mean(axis=0), group):7.2f} "
            f"{rq.f2(b['self_agreement']['value']):>7} {cpu / ft_all:7.3f}"
        )
    lines.append(f"WITHIN EACH FAMILY {task} (τw of the mean over proxy seeds / regret in seed s.d.; ceiling first)")
    for f in ("unet3d", "nnunet"):
        idx = [i for i, c in enumerate(cands) if family_of(c) == f]
        if len(idx) < 2:
            continue
        sub = conv[:, idx, :]
        cells = [f"ceiling {rq.f2(qs.ceiling(sub))}"]
        for label, scores, _ in rows:
            m = bs.measures(scores.mean(axis=0)[idx], sub, bs.tied_top_group(sub, n=boot), bs.seed_sd(sub))
            cells.append(f"{label}: {rq.f2(m['wtau'])} / {rq.f2(m['regret_sd'], '.1f')}")
        lines.append(f"  {f}: " + "; ".join(cells))
    return lines


def candidates() -> list[str]:
    doc = rq.load(PREREGISTRATION)
    return [r["name"] for f in ("unet3d", "nnunet") for r in doc["candidates"][f]]


def report(boot: int = 1000) -> str:
    doc = rq.load(PREREGISTRATION)
    tuning = doc["tuning_task"]
    tuning_gt = rq.read_gt(tuning, candidates=candidates(), root=RESULTS)
    if tuning_gt is not None and len(tuning_gt["seeds"]) < 2:
        tuning_gt = None
    out = [f"BENCHMARK v2 (pre-registration {doc['created']}); raw results under {RESULTS}"]
    for task in (tuning, *doc["evaluation_tasks"]):
        out += [*report_task(task, tuning_gt, boot, tuning), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    print(report(args.bootstrap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
