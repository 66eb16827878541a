"""Ranking quality: do BN-only evaluation and LogME order candidates as full fine-tuning does?

For every task: the ground truth is the Dice each candidate reaches after full fine-tuning (all
parameters, fresh head, Adam), on several seeds (seed = patch schedule + head initialisation; seeds 1..S,
never the proxies' seed 0). Its own seed-to-seed agreement is the noise ceiling: no proxy can be judged
more precisely than two fine-tuning runs agree with each other. Each proxy is compared with the mean
ground truth (weighted Kendall τ with hyperbolic weights, Spearman ρ, top-1) and, on the same footing as
the ceiling, with each single seed's order (mean weighted τ). BN-only evaluation is swept over learning
rate and step count (a step count is a prefix of a longer run: no schedule depends on the budget); its
default is picked on task A and checked on task B. Wall time is relative to fine-tuning every candidate
once (one seed of the ground truth).

    .venv/bin/python bench/ranking_quality.py --quick      # ~15 min on 2 cores
    .venv/bin/python bench/ranking_quality.py              # the full zoo and budgets

Method, zoo and discussion: docs/ranking-quality.md; recorded tables: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy.stats import ConstantInputWarning, kendalltau, spearmanr, weightedtau

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess  # noqa: E402
from bnrank.engine.logme import LogMEConfig, logme_entry  # noqa: E402
from bnrank.engine.ranking import rank_candidates  # noqa: E402
from bnrank.engine.task import make_task  # noqa: E402
from bnrank.engine.threads import configure_threads  # noqa: E402
from bnrank.engine.training import TrainConfig, windowed_score  # noqa: E402
from bnrank.engine.verify import finetune_candidate  # noqa: E402
from bnrank.engine.zoo import ZooSpec, build_zoo, write_csf_task  # noqa: E402

DEFAULT = TrainConfig()  # the current BN-only defaults, for comparison


@dataclass
class Budget:
    spacing_mm: float = 5.0
    patch: int = 24
    batch: int = 2
    val_every: int = 10
    gt_steps: int = 80
    gt_lr: float = 3e-3
    seeds: int = 4
    task_a_cases: int = 12
    sweep_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 1e-1)
    sweep_steps: tuple[int, ...] = (20, 50, 100, 200)
    sweep_task_b: str = "grid"  # grid | picked (only the lr picked on task A, plus the current default)
    logme_batches: int = 8
    logme_per_class: int = 1000

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            gt_steps=40,
            seeds=3,
            task_a_cases=8,
            sweep_lrs=(1e-2, 3e-2, 1e-1),
            sweep_steps=(20, 50, 100),
            sweep_task_b="picked",
        )

    @classmethod
    def smoke(cls) -> Budget:
        """Only checks that the script runs end to end (a minute); its numbers mean nothing."""
        return cls(
            patch=16,
            val_every=2,
            gt_steps=4,
            seeds=2,
            task_a_cases=4,
            sweep_steps=(2, 4),
            sweep_task_b="picked",
            logme_batches=2,
            logme_per_class=100,
        )


# ------------------------------------------------------------------------------------------------ metrics


def wtau(a, b) -> float:
    """Weighted Kendall τ, hyperbolic weights (scipy's default), rank by both orders (symmetric)."""
    return float(weightedtau(np.asarray(a, float), np.asarray(b, float)).statistic)


def rho(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def top1(a, b) -> bool:
    return int(np.argmax(a)) == int(np.argmax(b))


def ceiling(gt: np.ndarray) -> dict:
    """Seed against seed: mean over pairs of seeds of weighted τ, ρ and top-1 agreement."""
    pairs = list(itertools.combinations(range(len(gt)), 2))
    return {
        "wtau": float(np.mean([wtau(gt[i], gt[j]) for i, j in pairs])),
        "rho": float(np.mean([rho(gt[i], gt[j]) for i, j in pairs])),
        "top1": float(np.mean([top1(gt[i], gt[j]) for i, j in pairs])),
    }


def agreement(proxy, gt: np.ndarray) -> dict:
    mean = gt.mean(0)
    return {
        "wtau": wtau(proxy, mean),
        "rho": rho(proxy, mean),
        "top1": top1(proxy, mean),
        "wtau_vs_seeds": float(np.mean([wtau(proxy, g) for g in gt])),
        "rho_vs_seeds": float(np.mean([rho(proxy, g) for g in gt])),
        "top1_vs_seeds": float(np.mean([top1(proxy, g) for g in gt])),
    }


# ------------------------------------------------------------------------------------------------ running


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_task(dataset: Path, budget: Budget, cache: Path):
    pre = preprocess(open_dataset(dataset), PreprocessConfig(spacing=(budget.spacing_mm,) * 3), cache_root=cache)
    return make_task(pre, seed=0)


def config_for(budget: Budget, **kw) -> TrainConfig:
    base = {
        "patch_size": (budget.patch,) * 3,
        "batch_size": budget.batch,
        "val_every": budget.val_every,
        "patience": 10**6,  # no early stop: shorter budgets are prefixes of the longest
    }
    return TrainConfig(**{**base, **kw})


def ground_truth(cands, task, budget: Budget) -> dict:
    scores = np.zeros((budget.seeds, len(cands)))
    seconds = np.zeros(budget.seeds)
    for s in range(budget.seeds):
        config = config_for(budget, max_steps=budget.gt_steps, lr=budget.gt_lr, seed=s + 1)
        for c, cand in enumerate(cands):
            t0 = time.perf_counter()
            scores[s, c] = finetune_candidate(cand, task, config).score
            seconds[s] += time.perf_counter() - t0
        shown = ", ".join(f"{c.name} {v:.3f}" for c, v in zip(cands, scores[s], strict=True))
        log(f"  ground truth seed {s + 1}: {shown}")
    return {"scores": scores, "seconds_per_seed": float(seconds.mean())}


def bn_only_sweep(cands, task, budget: Budget, lrs) -> dict:
    """BN-only scores and seconds at every (lr, steps) of the grid; one run per lr, steps read off its curve."""
    out = {}
    for lr in lrs:
        config = config_for(budget, max_steps=max(budget.sweep_steps), lr=lr, seed=0)
        result = rank_candidates(cands, task, config, control=False)
        by_name = {e.checkpoint: e for e in result.entries}
        entries = [by_name[c.name] for c in cands]
        for steps in budget.sweep_steps:
            scores, half, secs = [], [], 0.0
            for e in entries:
                scores.append(windowed_score(e.curve, config.score_window, upto_step=steps))
                half.append(windowed_score(e.curve, config.score_window, upto_step=steps // 2))
                at = max(p["seconds"] for p in e.curve if p["step"] <= steps)
                secs += at + (e.seconds - e.curve[-1]["seconds"])  # training to `steps` + build/load/γ
            # The ranking's own stability report: order at half the steps against the order at the end.
            stable = float(kendalltau(half, scores).statistic)
            out[(lr, steps)] = {"scores": scores, "seconds": secs, "stability_tau": stable}
        log(f"  BN-only lr {lr:g}: " + ", ".join(f"{e.checkpoint} {e.score:.3f}" for e in entries))
    return out


def logme_scores(cands, task, budget: Budget) -> dict:
    config = config_for(budget, seed=0)
    lm = LogMEConfig.from_train_config(config, n_batches=budget.logme_batches, per_class=budget.logme_per_class)
    entries = [logme_entry(c, task, config, lm) for c in cands]
    bad = [e for e in entries if e.status != "ok"]
    if bad:
        raise SystemExit(f"LogME failed: {bad[0].checkpoint}: {bad[0].error}")
    log("  LogME: " + ", ".join(f"{e.checkpoint} {e.score:.3f}" for e in entries))
    return {"scores": [e.score for e in entries], "seconds": sum(e.seconds for e in entries)}


def pick(sweep: dict, gt: np.ndarray) -> tuple[float, int]:
    """The grid point whose order agrees best with single fine-tuning seeds; ties go to the cheaper one."""

    def key(k: tuple[float, int]) -> tuple[float, int, float]:
        tau = agreement(sweep[k]["scores"], gt)["wtau_vs_seeds"]
        return (round(tau, 3) if np.isfinite(tau) else -np.inf, -k[1], -k[0])

    return max(sweep, key=key)


# ------------------------------------------------------------------------------------------------ report


def fmt(x, spec=".2f") -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec)


def table(results: dict, picked: tuple[float, int]) -> str:
    lines = []
    head = (
        f"{'task':<26} {'method':<28} {'τw vs GT':>8} {'ρ vs GT':>7} {'τw vs seed':>10} "
        f"{'top-1':>5} {'time s':>7} {'× FT-all':>8}"
    )
    lines += [head, "-" * len(head)]
    for name, r in results.items():
        ft = r["gt"]["seconds_per_seed"]
        c = r["ceiling"]
        lines.append(
            f"{name:<26} {'GT seed vs seed (ceiling)':<28} {'':>8} {'':>7} {fmt(c['wtau']):>10} "
            f"{fmt(c['top1']):>5} {ft:7.0f} {1.0:8.2f}"
        )
        rows = [(f"BN-only {picked[1]} st lr {picked[0]:g} (picked)", r["sweep"][picked])]
        if (DEFAULT.lr, DEFAULT.max_steps) in r["sweep"] and (DEFAULT.lr, DEFAULT.max_steps) != picked:
            default = (DEFAULT.lr, DEFAULT.max_steps)
            rows.append((f"BN-only {DEFAULT.max_steps} st lr {DEFAULT.lr:g} (default)", r["sweep"][default]))
        best = r["best"]
        if best != picked:
            rows.append((f"BN-only {best[1]} st lr {best[0]:g} (best here)", r["sweep"][best]))
        rows.append(("LogME", r["logme"]))
        for label, m in rows:
            a = agreement(m["scores"], r["gt"]["scores"])
            lines.append(
                f"{'':<26} {label:<28} {fmt(a['wtau']):>8} {fmt(a['rho']):>7} {fmt(a['wtau_vs_seeds']):>10} "
                f"{fmt(a['top1']):>5} {m['seconds']:7.0f} {m['seconds'] / ft:8.2f}"
            )
    return "\n".join(lines)


def sweep_table(name: str, r: dict, budget: Budget) -> str:
    lrs = sorted({k[0] for k in r["sweep"]})
    lines = [f"{name}: BN-only sweep, weighted τ vs single fine-tuning seeds (vs the mean GT)"]
    lines.append(f"{'lr':>8} " + " ".join(f"{s:>6} steps  " for s in budget.sweep_steps))
    for lr in lrs:
        cells = []
        for s in budget.sweep_steps:
            a = agreement(r["sweep"][(lr, s)]["scores"], r["gt"]["scores"])
            cells.append(f"{a['wtau_vs_seeds']:6.2f} ({a['wtau']:5.2f})")
        lines.append(f"{lr:8g} " + " ".join(cells))
    return "\n".join(lines)


def candidate_table(name: str, r: dict, cands, picked) -> str:
    gt = r["gt"]["scores"]
    stab = r["sweep"][picked]["stability_tau"]
    lines = [
        f"{name}: per candidate (GT = fine-tuned Dice, mean ± sd over {len(gt)} seeds; BN-only at the picked "
        f"defaults, its stability: Kendall τ {fmt(stab)} between the order at half the steps and at the end)"
    ]
    lines.append(f"{'candidate':<22} {'GT Dice':>13} {'BN-only':>8} {'LogME':>8}")
    order = np.argsort(-gt.mean(0))
    for c in order:
        lines.append(
            f"{cands[c].name:<22} {gt[:, c].mean():6.3f} ± {gt[:, c].std():.3f} "
            f"{r['sweep'][picked]['scores'][c]:8.3f} {r['logme']['scores'][c]:8.3f}"
        )
    return "\n".join(lines)


def report(results: dict, picked, budget: Budget, cands, started: float, threads: int) -> str:
    out = [
        f"zoo: {len(cands)} × unet3d width 8 ({', '.join(c.name for c in cands)}); ground truth: full fine-tuning "
        f"{budget.gt_steps} steps, lr {budget.gt_lr:g}, {budget.seeds} seeds; patches {budget.patch}³, batch "
        f"{budget.batch}, {budget.spacing_mm:g} mm; BN-only picked on task A: lr {picked[0]:g}, {picked[1]} steps",
        "",
        table(results, picked),
        "",
    ]
    for name, r in results.items():
        out += [sweep_table(name, r, budget), "", candidate_table(name, r, cands, picked), ""]
    out.append(f"total wall time {time.perf_counter() - started:.0f}s ({threads} threads)")
    return "\n".join(out)


def write_json(path, results: dict, picked, budget: Budget, spec, zoo) -> None:
    payload = {
        "budget": asdict(budget),
        "zoo": {
            "spec": asdict(spec),
            "candidates": [c.name for c in zoo.candidates],
            "descriptions": zoo.descriptions,
            "seconds": zoo.seconds,
        },
        "picked": list(picked),
        "tasks": {
            name: {
                **{k: v for k, v in r.items() if k not in ("gt", "sweep", "best")},
                "gt_scores": r["gt"]["scores"].tolist(),
                "gt_seconds_per_seed": r["gt"]["seconds_per_seed"],
                "best": list(r["best"]),
                "sweep": [{"lr": k[0], "steps": k[1], **v} for k, v in r["sweep"].items()],
                "agreement": {
                    f"bn_only lr {k[0]:g} steps {k[1]}": agreement(v["scores"], r["gt"]["scores"])
                    for k, v in r["sweep"].items()
                }
                | {"logme": agreement(r["logme"]["scores"], r["gt"]["scores"])},
            }
            for name, r in results.items()
        },
    }
    Path(path).write_text(json.dumps(payload, indent=2, default=float))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smaller zoo and budgets (under 20 min on 2 cores)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help="folder for the zoo and tasks (default: a temporary folder)")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds of the ground truth (3)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", ConstantInputWarning)  # a constant order (all Dice 0) is reported as n/a
    threads = configure_threads(threads=args.threads)
    budget = Budget.smoke() if args.smoke else Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=args.seeds)
    spec = ZooSpec.quick() if args.quick else ZooSpec()
    spec = replace(spec, task_cases=budget.task_a_cases)
    if args.smoke:
        spec = ZooSpec(
            pretrain_steps=4, pretrain_patch=16, pretrain_volumes=2, supervised_steps=6, source_cases=3, task_cases=4
        )
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bnrank-quality-") if not args.work else None
    work = Path(args.work or tmp.name)  # type: ignore[union-attr]
    kind = "smoke" if args.smoke else "quick" if args.quick else "full"
    log(f"work folder {work}, {threads} thread(s), {kind} run")

    zoo = build_zoo(work / "zoo", spec, log=log)
    cands = zoo.candidates
    csf = write_csf_task(work / "tasks", n_cases=6, seed=500)
    tasks = {f"A: MRI tissues, {spec.task_cases} cases": zoo.dataset, "B: CSF only, 6 cases": csf}
    log(f"zoo of {len(cands)} built in {time.perf_counter() - started:.0f}s: {zoo.seconds}")

    results: dict[str, dict] = {}
    picked: tuple[float, int] | None = None
    for i, (name, dataset) in enumerate(tasks.items()):
        task = load_task(dataset, budget, work / "cache")
        log(f"task {name}: {len(task.train)} train / {len(task.val)} val, classes {task.class_names[1:]}")
        r: dict = {"classes": task.class_names[1:], "n_train": len(task.train), "n_val": len(task.val)}
        r["gt"] = ground_truth(cands, task, budget)
        r["ceiling"] = ceiling(r["gt"]["scores"])
        grid = i == 0 or budget.sweep_task_b == "grid"
        lrs = budget.sweep_lrs if grid else tuple(sorted({picked[0], DEFAULT.lr}))  # type: ignore[index]
        r["sweep"] = bn_only_sweep(cands, task, budget, lrs)
        r["best"] = pick(r["sweep"], r["gt"]["scores"])
        if picked is None:
            picked = r["best"]
            log(f"picked BN-only defaults on {name}: lr {picked[0]:g}, {picked[1]} steps")
        r["logme"] = logme_scores(cands, task, budget)
        results[name] = r
        log("so far:\n" + table(results, picked))
        if args.json:
            write_json(args.json, results, picked, budget, spec, zoo)
    assert picked is not None

    print(report(results, picked, budget, cands, started, threads))
    if args.json:
        write_json(args.json, results, picked, budget, spec, zoo)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
