"""Does the machine move benchmark v2's ground truth? Rerun committed ground-truth runs here and compare.

Benchmark v2's ground truth spans sessions on changing CPUs, and the registered precision "auto" trains in bf16
where the CPU has it natively and in fp32 elsewhere. This reruns named (candidate, seed) runs of one task on this
machine, with the committed weights and the same code path, and writes each rerun's test Dice and training CPU
seconds beside the committed run's, so a shift by machine is told apart from a shift by seed, and two machine
classes whose runs agree in both can be read as one (``bench/report_v2.py``).

    python bench/v2_machine_check.py --task tuning --runs nnunet_random:4 nnunet_genesis_mr:4
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import benchmark_v2 as B  # noqa: E402
import ranking_quality as rq  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="tuning")
    p.add_argument("--runs", nargs="+", required=True, metavar="CANDIDATE:SEED")
    p.add_argument("--cache", type=Path, default=rq.DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=B.RESULTS / "checks")
    args = p.parse_args(argv)
    from bnrank.engine.threads import configure_threads

    configure_threads(threads=1)
    spec, zoo, data, test, _ = B._task(args.task, args.cache)
    cfg = replace(B.GT, patch=spec.patch)
    by_name = {c.name: c for c in zoo.candidates}
    rows = []
    for item in args.runs:
        name, seed = item.rsplit(":", 1)
        committed = rq.load(B.RESULTS / "ground_truth" / args.task / name / f"seed{seed}.json")
        result = rq.finetune(by_name[name], data, test, int(seed), cfg.budgets, cfg)
        rows.append(
            {
                "candidate": name,
                "seed": int(seed),
                "here": result["budgets"][-1]["dice"],
                "committed": committed["budgets"][-1]["dice"],
                "committed_class": rq.run_class(committed),
                # training CPU seconds to the last budget, as the report reads costs: are the two classes one?
                "here_train_cpu_seconds": result["budgets"][-1]["train_cpu_seconds"],
                "committed_train_cpu_seconds": committed["budgets"][-1].get("train_cpu_seconds"),
            }
        )
        r = rows[-1]
        rq.log(
            f"{name} seed {seed}: here {r['here']:.4f} in {r['here_train_cpu_seconds']:.0f} CPU s, "
            f"committed {r['committed']:.4f} in {r['committed_train_cpu_seconds'] or float('nan'):.0f} CPU s"
        )
    machine = B.machine()
    out = args.out / f"{args.task}_{machine['precision']}_{'_'.join(r.replace(':', 's') for r in args.runs)}.json"
    rq.dump(out, {"task": args.task, "machine": machine, "runs": rows})
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
