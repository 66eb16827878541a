"""Where a norm-only ranking's CPU goes on a task's volumes: training steps or whole-volume validation.

Benchmark v2 measures the default ranking as the product runs it: it validates every ``val_every`` (10) steps,
and each validation predicts every validation case whole. On 5 mm volumes that is cheap; on the 2 mm real head it
is most of the cost. This reruns chosen candidates' norm-only runs on one task, as the benchmark's proxy files
made them (same seed, learning rate, score and budget), once validating every 10 steps and once only where the
score is taken (``validate_at="scored"``), and puts each beside the candidate's committed fine-tuning CPU seconds.
Post hoc: it is not a registered measure, and it changes no default.

    python bench/v2_validation_cost.py --task real_brain --candidates u8_random nnunet_random
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import benchmark_v2 as B  # noqa: E402
import ranking_quality as rq  # noqa: E402


def norm_only_run(cand, data, config) -> dict[str, float | int | None]:
    """CPU seconds, score and number of validations of one candidate's norm-only run under ``config``."""
    e = B.normonly_run(cand, data, config)
    return {
        "cpu_seconds": e["cpu_seconds"],
        "score": e["score"],
        "validations": sum(1 for p in e["curve"] if p.get("score") is not None),
    }


def finetune_cpu(task: str, cand: str) -> float:
    """Mean training CPU seconds of the candidate's committed ground-truth runs to their last budget."""
    runs = sorted((B.RESULTS / "ground_truth" / task / cand).glob("seed*.json"))
    return mean(rq.load(p)["budgets"][-1]["train_cpu_seconds"] for p in runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="real_brain")
    p.add_argument("--candidates", nargs="+", default=["u8_random", "nnunet_random"])
    p.add_argument("--steps", type=int, default=50, help="the default ranking's norm-only steps")
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=B.PROXY_SEEDS[0])
    p.add_argument("--cache", type=Path, default=rq.DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=B.RESULTS / "checks")
    args = p.parse_args(argv)
    from bnrank.engine.threads import configure_threads

    configure_threads(threads=1)
    spec, zoo, data, _, _ = B._task(args.task, args.cache)
    by_name = {c.name: c for c in zoo.candidates}
    base = replace(B._norm_config(spec, args.lr, args.seed, "soft_dice"), max_steps=args.steps, score_window=1)
    rows = []
    for name in args.candidates:
        every = norm_only_run(by_name[name], data, base)
        scored = norm_only_run(by_name[name], data, replace(base, validate_at="scored"))
        ft = finetune_cpu(args.task, name)
        rows.append({"candidate": name, "every": every, "scored": scored, "finetune_cpu": ft})
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc = {
        "task": args.task,
        "steps": args.steps,
        "lr": args.lr,
        "seed": args.seed,
        "val_every": base.val_every,
        "code": B.CODE or head,
        "machine": B.machine(),
        "host": platform.node(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"validation_cost_{args.task}_{args.steps}st.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))
    print(f"raw: {path}")
    return 0


def table(doc: dict) -> str:
    """One line per candidate: CPU seconds validating every ``val_every`` steps and only where scored, as shares of
    fine-tuning it, and whether the two runs scored alike (validation does not touch training)."""
    head = f"{'candidate':<18} {'every':>8} {'n':>3} {'scored':>8} {'n':>3} {'fine-tune':>10} {'every/FT':>9}"
    lines = [
        f"norm-only {doc['steps']} steps on {doc['task']}, validating every {doc['val_every']} steps or where scored "
        "(CPU s, one thread)",
        head + f" {'scored/FT':>9}  same score",
    ]
    for r in doc["rows"]:
        e, s, ft = r["every"], r["scored"], r["finetune_cpu"]
        same = "yes" if e["score"] == s["score"] else f"no ({e['score']:.4f} vs {s['score']:.4f})"
        lines.append(
            f"{r['candidate']:<18} {e['cpu_seconds']:>8.1f} {e['validations']:>3} {s['cpu_seconds']:>8.1f} "
            f"{s['validations']:>3} {ft:>10.1f} {e['cpu_seconds'] / ft:>9.3f} {s['cpu_seconds'] / ft:>9.3f}  "
            f"{same}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
