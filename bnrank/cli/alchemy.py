"""`bnrank alchemy` and `bnrank probe`: network alchemy and the γ-clipping probe of one checkpoint, locally.

Their options are AlchemyConfig's and ProbeConfig's flags (bnrank/cli/options.py); alchemy's budget flags
default to the fine-tuning budget, FINETUNE_DEFAULTS, the probe's to a ranking's. The engine code that runs
them (and torch) is imported by the command that runs, not by the parser.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from bnrank.cli.local import add_network_flags, load_task, progress_printer, read_network_def
from bnrank.cli.options import add_budget, add_flags, build, local_options
from bnrank.engine.configs.alchemy import FINETUNE_DEFAULTS, AlchemyConfig
from bnrank.engine.configs.probe import ProbeConfig
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.threads import configure_threads

if TYPE_CHECKING:
    from bnrank.engine.alchemy import AlchemyResult, FoldsResult
    from bnrank.engine.probe import ProbeResult


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="nnU-Net v2 raw or Decathlon dataset folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint (.safetensors or PyTorch state dict)")
    add_network_flags(p)
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def register(sub: argparse._SubParsersAction) -> None:
    """Add alchemy and probe."""
    p = sub.add_parser(
        "alchemy",
        help="fine-tune a checkpoint with network alchemy (identification, modification, maximization)",
        description="Network alchemy (thesis §3.2.2) of one checkpoint on one dataset; see docs/alchemy.md.",
    )
    _common(p)
    add_flags(p.add_argument_group("alchemy"), local_options(AlchemyConfig))
    p.add_argument("--folds", type=int, default=None, help="k-fold cross-validation over all cases")
    p.add_argument("--out", required=True, help="fine-tuned weights (.safetensors; per fold with --folds)")
    add_budget(p, defaults=FINETUNE_DEFAULTS)
    p.set_defaults(func=cmd_alchemy)

    p = sub.add_parser(
        "probe",
        help="γ-clipping probe: Dice after zeroing small γ vs as many random γ (thesis Fig. 3.1)",
        description="BN-only training, then clip γ under each threshold, and as many at random; see docs/alchemy.md.",
    )
    _common(p)
    add_flags(p.add_argument_group("probe"), local_options(ProbeConfig))
    add_budget(p)
    p.set_defaults(func=cmd_probe)


# ------------------------------------------------------------------------------------------- alchemy


def cmd_alchemy(args: argparse.Namespace) -> int:
    from bnrank.engine.alchemy import alchemy_checkpoint, alchemy_kfold, write_json

    threads = configure_threads(threads=args.threads)
    config = build(TrainConfig, args)
    options = build(AlchemyConfig, args)
    network_def = read_network_def(args.network_def)
    dataset, task = load_task(args)
    common = {
        "architecture": args.architecture,
        "network_def": network_def,
        "head": args.head,
        "dataset_name": str(dataset.root),
        "on_progress": progress_printer(args.quiet),
    }
    steps = []
    if options.identifies:
        steps.append(f"identification ({options.identify_steps} BN-only steps)")
    if options.modifies:
        steps.append("modification")
    steps.append(f"fine-tuning{' with R_γ' if options.maximizes else ''} ({config.max_steps} steps)")
    print(f"{options.mode}: {' → '.join(steps)}; {threads} thread(s)", file=sys.stderr)
    if args.folds:
        result = alchemy_kfold(args.checkpoint, task, config, options, folds=args.folds, out=args.out, **common)
        print_folds(result)
        payload: dict[str, Any] = result.to_dict()
        written = [f.weights for f in result.folds]
    else:
        print(f"{len(task.train)} training / {len(task.val)} validation cases", file=sys.stderr)
        single, _ = alchemy_checkpoint(args.checkpoint, task, config, options, out=args.out, **common)
        print_alchemy(single)
        payload = single.to_dict()
        written = [single.weights]
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        write_json(payload, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _f(x: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.3f}"


def print_alchemy(r: AlchemyResult) -> None:
    print(f"{r.mode} of {r.checkpoint} ({r.architecture}) on {r.dataset}")
    print()
    header = f"{'phase':<38} {'steps':>5}  {'val Dice':>8}  {'sec':>7}"
    print(header)
    print("-" * len(header))
    if r.identification:
        i = r.identification
        print(f"{'identification (BN-only)':<38} {i['steps']:>5}  {i['score']:8.3f}  {i['seconds']:7.1f}")
    if r.modification:
        m = r.modification
        print(f"{'modification':<38} {'':>5}  {'':>8}  {'':>7}  re-initialised {m['reinitialised']} kernels")
    name = "fine-tuning + R_γ (maximization)" if r.options["maximization"] else "fine-tuning"
    print(f"{name:<38} {r.steps:>5}  {r.score:8.3f}  {r.seconds:7.1f} (all phases)")
    print()
    print("per-class Dice: " + ", ".join(f"{c} {_f(d, 0)}" for c, d in r.dice_per_class.items()))
    print()
    thr = r.options.get("threshold") or r.gamma["raw"]["summary"].get("threshold")
    header = f"{'γ':<22} {'count':>6} {'mean':>6} {'std':>6} {'median':>6} {'<' + format(thr, 'g'):>7}"
    print(header)
    print("-" * len(header))
    for phase, stats in r.gamma.items():
        s = stats["summary"]
        if not s.get("count"):
            continue
        print(
            f"{phase.replace('_', ' '):<22} {s['count']:>6} {s['mean']:6.3f} {s['std']:6.3f} "
            f"{s['quantiles']['0.5']:6.3f} {s['share_below']:7.1%}"
        )
    if r.r_gamma:
        print("R_γ: " + ", ".join(f"{k} {v:+.4f}" for k, v in r.r_gamma.items()))
    if r.selection and r.modification:
        _print_selection(r.selection, r.modification, r.options)
    for w in r.warnings:
        print(f"warning: {w}")


def _print_selection(s: dict[str, Any], modification: dict[str, Any], options: dict[str, Any]) -> None:
    """Which kernels were marked redundant, by which rule, and the layers they were re-initialised in."""
    rule = f"|γ| < {s['threshold']:g}" if s["rule"] == "threshold" else f"lowest {s['fraction']:.0%}"
    print()
    print(
        f"redundant ({rule}): {s['marked']} of {s['total']} kernels marked, "
        f"{modification['reinitialised']} re-initialised"
        + (f" (capped at {options['max_share']:.0%})" if s["capped"] else "")
    )
    rows = [layer for layer in modification["layers"] if layer["reinitialised"]]
    if rows:
        header = f"{'norm layer':<44} {'fed by':<16} {'kernels':>7} {'re-init':>7}"
        print(header)
        print("-" * len(header))
        for layer in rows:
            print(
                f"{layer['bn'][-44:]:<44} {layer['conv_type']:<16} {layer['channels']:>7} {layer['reinitialised']:>7}"
            )
    untouched = len(modification["layers"]) - len(rows)
    if untouched:
        print(f"({untouched} other conv→norm layer(s): nothing re-initialised)")
    for skipped in modification["skipped"]:
        print(f"skipped {skipped.get('kind', 'batch')} norm {skipped['bn']}: {skipped['reason']}")


def print_folds(res: FoldsResult) -> None:
    first = res.folds[0]
    classes = list(first.dice_per_class)
    print(f"{first.mode} of {first.checkpoint} ({first.architecture}), {len(res.folds)}-fold cross-validation")
    header = f"{'fold':>4} {'train':>5} {'val':>4}  {'Dice':>6}  " + "  ".join(f"{c[:10]:>10}" for c in classes)
    print(header)
    print("-" * len(header))
    for i, f in enumerate(res.folds):
        cells = "  ".join(f"{_f(f.dice_per_class.get(c)):>10}" for c in classes)
        print(f"{i:>4} {f.n_train:>5} {f.n_val:>4}  {f.score:6.3f}  {cells}")
    print("-" * len(header))
    cells = "  ".join(f"{_f(res.per_class_mean.get(c)):>10}" for c in classes)
    print(f"{'mean':>4} {'':>5} {'':>4}  {res.dice_mean:6.3f}  {cells}")
    print(f"Dice {res.dice_mean:.3f} ± {res.dice_std:.3f} (mean ± sample std over {len(res.folds)} folds)")
    for i, f in enumerate(res.folds):
        for w in f.warnings:
            print(f"warning (fold {i}): {w}")


# --------------------------------------------------------------------------------------------- probe


def cmd_probe(args: argparse.Namespace) -> int:
    from bnrank.engine.alchemy import write_json
    from bnrank.engine.probe import probe_checkpoint

    configure_threads(threads=args.threads)
    config = build(TrainConfig, args)
    probe = build(ProbeConfig, args)
    network_def = read_network_def(args.network_def)
    dataset, task = load_task(args)
    result = probe_checkpoint(
        args.checkpoint,
        task,
        config,
        probe.thresholds,
        draws=probe.draws,
        architecture=args.architecture,
        network_def=network_def,
        head=args.head,
        dataset_name=str(dataset.root),
        on_progress=progress_printer(args.quiet),
    )
    print_probe(result)
    if args.json:
        write_json(result.to_dict(), args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def print_probe(r: ProbeResult) -> None:
    print(f"γ-clipping probe of {r.checkpoint} ({r.architecture}) on {r.dataset}")
    print(
        f"BN-only training: {r.bn_only.get('steps')} steps; unclipped val Dice {r.dice_unclipped:.3f} "
        f"({r.n_channels} γ channels: {', '.join(r.bn_only.get('norm', {}).get('kinds', [])) or 'batch'})"
    )
    header = f"{'|γ| <':>7} {'clipped':>7} {'share':>6}  {'Dice (|γ|<T)':>12}  {'Dice (random)':>15}"
    print(header)
    print("-" * len(header))
    for row in r.rows:
        rnd = f"{row.dice_random:.3f} ± {row.dice_random_std:.3f}"
        print(f"{row.threshold:7g} {row.n_clipped:>7} {row.share_clipped:6.1%}  {row.dice_threshold:12.3f}  {rnd:>15}")
    print(f"random: the same number of γ zeroed at random, mean ± std over {r.draws} draw(s)")
