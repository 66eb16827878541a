"""Ablation of network alchemy on the demo task: the rows of thesis Tables 4.1 and 4.2.

Target task: the demo's T1 brain MRI (CSF / grey / white matter), unet3d at the demo width, 32³ patches.
Initialisations:

- ``same modality``: the demo's ``brain_supervised`` candidate (trained on other T1 subjects);
- ``diff modality``: made here: the same architecture trained on the *same source subjects* with their
  normalised intensities negated (CSF bright, white matter dark: a T2-like contrast), so the only
  difference from ``same modality`` is the contrast;
- ``scratch``: the architecture, randomly initialised from the seed.

Every run uses the same seeded patch schedule, validation cases and budget (fixed number of steps, no
early stopping); Dice is the mean of the last three validations. Two rows are not in the thesis:
"identification only" (BN-only warm-up, nothing re-initialised, plain fine-tuning) and plain
fine-tuning for as many extra steps as identification takes; without them any gain of alchemy could be
the warm-up's, or just more training. With one seed the table shows what one
run measured, not a significance test: see docs/alchemy.md for how to read it.

    .venv/bin/python bench/ablation.py                       # writes the demo data to a temp dir first
    .venv/bin/python bench/ablation.py --data /tmp/demo_alc  # reuse `bnrank demo-data --out /tmp/demo_alc`
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnrank.engine.alchemy import AlchemyConfig, AlchemyResult, alchemy_checkpoint  # noqa: E402
from bnrank.engine.architectures import build_model  # noqa: E402
from bnrank.engine.checkpoints import save_weights  # noqa: E402
from bnrank.engine.configs.training import TrainConfig  # noqa: E402
from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess  # noqa: E402
from bnrank.engine.demo import DEMO_ARCH, DEMO_PATCH, DEMO_WIDTH, write_demo  # noqa: E402
from bnrank.engine.demo_volumes import write_demo_task  # noqa: E402
from bnrank.engine.task import make_task  # noqa: E402
from bnrank.engine.threads import configure_threads  # noqa: E402
from bnrank.engine.training.patches import TaskData, Volume  # noqa: E402
from bnrank.engine.training.trainer import train  # noqa: E402

DATASET = "Dataset501_MNIBrain"

# (key, table-4.1 label, init, options)
RUNS: list[tuple[str, str, str, dict]] = [
    ("same", "pre-trained, same modality (T1)", "same", {"mode": "finetune"}),
    ("scratch", "from scratch", "scratch", {"mode": "scratch"}),
    ("diff", "pre-trained, diff. modality (inverted)", "diff", {"mode": "finetune"}),
    ("diff_long", "  fine-tuned longer (+ the identification steps)", "diff", {"mode": "finetune", "longer": True}),
    ("diff_id", "  + identification (BN-only warm-up only)", "diff", {"modification": False, "maximization": False}),
    ("diff_idmod", "  + identification + modification", "diff", {"maximization": False}),
    ("diff_alchemy", "  + identification + modification + maximization", "diff", {}),
    ("scratch_r", "from scratch + R_γ", "scratch", {"mode": "scratch", "maximization": True}),
    ("diff_r", "diff. modality + R_γ", "diff", {"mode": "finetune", "maximization": True}),
    ("same_r", "same modality + R_γ", "same", {"mode": "finetune", "maximization": True}),
    ("diff_r1", "diff. modality + R_γ with λ = 1", "diff", {"mode": "finetune", "maximization": True, "lam": 1.0}),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def inverted_candidate(out: Path, seed: int, steps: int, source_cases: int = 8) -> Path:
    """The demo network trained on the demo's source subjects with negated (T2-like) intensities.

    ``seed`` is the demo's seed: source subjects, split and init seed are those of ``brain_supervised``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        # the same source subjects write_demo trains brain_supervised on (seed + 1000)
        source = write_demo_task(Path(tmp), n_cases=source_cases, seed=seed + 1000, name="Dataset502_MNIBrainSource")
        pre = preprocess(open_dataset(source), PreprocessConfig(), cache_root=Path(tmp) / "cache")
        task = make_task(pre, val_fraction=0.25, seed=seed)
        flip = [Volume(v.case_id, -v.image, v.label) for v in [*task.train, *task.val]]
        inverted = TaskData(flip[: len(task.train)], flip[len(task.train) :], task.class_names)
        import torch

        torch.manual_seed(seed + 11)
        model = build_model(DEMO_ARCH, in_channels=1, out_channels=4, width=DEMO_WIDTH)
        config = TrainConfig(
            max_steps=steps, patch_size=DEMO_PATCH, val_every=steps, patience=10**6, lr=3e-3, seed=seed
        )
        result = train(model, model.parameters(), inverted, config, label="inverted source")
        log(f"diff-modality candidate: {steps} steps on inverted source subjects, source val Dice {result.score:.3f}")
        return save_weights(
            model, out, {"description": "demo unet3d trained on intensity-inverted (T2-like) source subjects"}
        )


def run_all(args: argparse.Namespace, data_root: Path, work: Path) -> dict:
    pre = preprocess(open_dataset(data_root / DATASET), PreprocessConfig(), cache_root=work / "cache")
    task = make_task(pre, seed=args.seed)
    log(f"target: {len(task.train)} training / {len(task.val)} validation subjects")
    inits = {
        "same": data_root / "candidates" / "brain_supervised.safetensors",
        "diff": inverted_candidate(work / "brain_inverted.safetensors", args.demo_seed, args.source_steps),
    }
    inits["scratch"] = inits["same"]  # only fixes the architecture; weights drawn from the seed
    config = TrainConfig(
        max_steps=args.steps,
        patch_size=DEMO_PATCH,
        batch_size=2,
        val_every=args.val_every,
        patience=10**6,
        lr=args.lr,
        seed=args.seed,
    )
    results: dict[str, AlchemyResult] = {}
    for key, label, init, opts in RUNS:
        rule = {"threshold": args.threshold} if args.threshold is not None else {"fraction": args.fraction}
        opts = dict(opts)
        run_config = replace(config)
        if opts.pop("longer", False):  # control: as many extra steps as identification gets, but full ones
            run_config = replace(config, max_steps=args.steps + args.identify_steps)
        options = AlchemyConfig(
            **{"identify_steps": args.identify_steps, "identify_lr": args.identify_lr, **rule, **opts}
        )
        started = time.perf_counter()
        result, _ = alchemy_checkpoint(inits[init], task, run_config, options)
        results[key] = result
        log(f"{label.strip():<50} Dice {result.score:.3f}  ({time.perf_counter() - started:.0f}s)")
    return {"config": vars(args), "n_train": len(task.train), "n_val": len(task.val), "results": results}


def _q05(r: AlchemyResult) -> str:
    """5 % quantile of |γ| after training: the low tail that Fig. 4.1 is about."""
    g = r.gamma.get("after_alchemy") or r.gamma.get("after_training")
    return f"{g['summary']['quantiles']['0.05']:6.3f}"


def print_tables(out: dict, command: str, seconds: float) -> None:
    res: dict[str, AlchemyResult] = out["results"]
    classes = list(next(iter(res.values())).dice_per_class)
    print(f"command: {command}")
    print(
        f"target: demo T1 brain MRI, {out['n_train']} train / {out['n_val']} val subjects; unet3d width "
        f"{DEMO_WIDTH}; {out['config']['steps']} fine-tuning steps (lr {out['config']['lr']:g}), "
        f"identification {out['config']['identify_steps']} BN-only steps (lr {out['config']['identify_lr']:g}), "
        f"diff-modality candidate {out['config']['source_steps']} steps; demo seed {out['config']['demo_seed']}, "
        f"run seed {out['config']['seed']}; total {seconds / 60:.1f} min"
    )
    print()
    print("Table 4.1 (val Dice: mean of the last 3 validations; classes: last validation)")
    head = f"{'initialisation / steps':<50} {'Dice':>6}  " + "  ".join(f"{c[:8]:>8}" for c in classes)
    head += f"  {'re-init':>7}  {'|γ| q5':>6}  {'sec':>5}"
    print(head)
    print("-" * len(head))
    for key, label, _, _ in RUNS[:7]:
        r = res[key]
        cells = "  ".join(f"{(r.dice_per_class[c] or 0):8.3f}" for c in classes)
        reinit = r.modification["reinitialised"] if r.modification else "-"
        print(f"{label:<50} {r.score:6.3f}  {cells}  {reinit!s:>7}  {_q05(r)}  {r.seconds:5.0f}")
    sel = res["diff_idmod"].selection
    ident = res["diff_idmod"].gamma["after_identification"]["summary"]
    rule = f"|γ| < {sel['threshold']:g}" if sel["rule"] == "threshold" else f"lowest {sel['fraction']:g} of |γ|"
    print(
        f"redundant = {rule}: {sel['kept_after_cap']} of {sel['total']} kernels; after identification the "
        f"smallest |γ| is {sel['min_abs_gamma']:.3f} and {ident['share_below']:.1%} are under 0.05"
    )
    print()
    print("Table 4.2 (val Dice; R_γ = -α·mean(Γ) + β·std(Γ), α 0.1, β 1, λ 1e-4)")
    head = f"{'':<12} {'scratch':>9} {'diff. mod.':>11} {'same mod.':>10}"
    print(head)
    print("-" * len(head))
    print(f"{'w/o R_γ':<12} {res['scratch'].score:9.3f} {res['diff'].score:11.3f} {res['same'].score:10.3f}")
    print(f"{'w/ R_γ':<12} {res['scratch_r'].score:9.3f} {res['diff_r'].score:11.3f} {res['same_r'].score:10.3f}")
    deltas = [res[k + "_r"].score - res[k].score for k in ("scratch", "diff", "same")]
    print(f"{'Δ':<12} {deltas[0]:+9.3f} {deltas[1]:+11.3f} {deltas[2]:+10.3f}")
    for tag, suffix in (("R_γ end w/o", ""), ("R_γ end w/", "_r")):
        vals = [res[k + suffix].r_gamma["after"] for k in ("scratch", "diff", "same")]
        print(f"{tag:<12} {vals[0]:+9.4f} {vals[1]:+11.4f} {vals[2]:+10.4f}")
    r1 = res["diff_r1"]
    print(
        f"diff. modality with λ = 1 instead of 1e-4: Dice {r1.score:.3f} (Δ {r1.score - res['diff'].score:+.3f}), "
        f"R_γ end {r1.r_gamma['after']:+.4f}"
    )
    print("R_γ end: R_γ (α 0.1, β 1) of the fine-tuned network, recorded with or without it in the loss")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a `bnrank demo-data --out DIR` folder (default: write one to a temp dir)")
    p.add_argument("--steps", type=int, default=60, help="fine-tuning steps per run (%(default)s)")
    p.add_argument("--val-every", type=int, default=10, help="%(default)s")
    p.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate (%(default)s)")
    p.add_argument("--identify-steps", type=int, default=30, help="BN-only steps (%(default)s)")
    p.add_argument("--identify-lr", type=float, default=1e-2, help="%(default)s")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--fraction", type=float, default=0.1, help="redundant: lowest share of γ (%(default)s)")
    sel.add_argument("--threshold", type=float, default=None, help="redundant: |γ| under this instead")
    p.add_argument("--source-steps", type=int, default=100, help="training of the diff-modality candidate")
    p.add_argument("--seed", type=int, default=0, help="seed of the runs: split, patches, head, inits (%(default)s)")
    p.add_argument(
        "--demo-seed",
        type=int,
        default=0,
        help="seed the demo data was written with; the diff-modality candidate uses the same source subjects "
        "and init seed as brain_supervised (%(default)s)",
    )
    p.add_argument("--json", help="write every run's full result here")
    args = p.parse_args()
    configure_threads()
    command = ".venv/bin/python bench/ablation.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.data:
            data_root = Path(args.data)
        else:
            data_root = work / "demo"
            write_demo(data_root, seed=args.demo_seed, log=log)
        out = run_all(args, data_root, work)
    seconds = time.perf_counter() - started
    print_tables(out, command, seconds)
    if args.json:
        payload = {**out, "results": {k: v.to_dict() for k, v in out["results"].items()}, "seconds": seconds}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
