"""Engine-only commands: `bnrank rank`, `inspect`, `demo-data` and `pretrain` run on this machine, no server.

Also the pieces the other command modules share with them: the progress display, reading a dataset into a
task, reading a --network-def file. Module-level imports are the option declarations and plain types only;
each command imports the engine code it runs (and with it torch), so building the parser, `--help` and the
commands that never train start without loading torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnrank.cli.options import add_budget, add_flags, build, local_options, values
from bnrank.cli.table import print_ranking
from bnrank.engine.configs.candidate import CandidateOptions
from bnrank.engine.configs.gamma import DEFAULT_THRESHOLD
from bnrank.engine.configs.pretrain import PretrainConfig
from bnrank.engine.configs.ranking import RANKING_DEFAULTS, VERIFY_LR, VERIFY_STEPS, RankConfig, ranking_config
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.entries import RankEntry
from bnrank.engine.errors import BNRankError
from bnrank.engine.formats.conversion import conversion_line
from bnrank.engine.threads import configure_threads

if TYPE_CHECKING:
    from torch import nn

# ------------------------------------------------------------------------------------------ shared


def progress_printer(quiet: bool = False):
    """A one-line progress display on stderr; silent when stderr is not a terminal and quiet is asked."""
    last = [0.0]

    def show(step: int, total: int, message: str) -> None:
        if quiet:
            return
        now = time.monotonic()
        tty = sys.stderr.isatty()
        if now - last[0] < (0.5 if tty else 10.0) and step < total:
            return
        last[0] = now
        width = 24
        filled = int(width * step / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        end = "\r" if tty and step < total else "\n"
        sys.stderr.write(f"[{bar}] {step}/{total} {message[:90]:<90}{end}")
        sys.stderr.flush()

    return show


def load_task(args: argparse.Namespace):
    """The dataset of --dataset, preprocessed (or read from the cache), and its seeded train/validation task."""
    from bnrank.engine.data import PreprocessConfig, open_dataset, preprocess
    from bnrank.engine.task import make_task

    dataset = open_dataset(args.dataset)
    for problem in dataset.problems:
        print(f"warning: skipping {problem.case_id}: {problem.message}", file=sys.stderr)
    config = PreprocessConfig(spacing=tuple(args.spacing) if args.spacing else None)
    started = time.perf_counter()
    pre = preprocess(dataset, config, cache_root=args.cache_dir)
    how = "read from cache" if pre.from_cache else "preprocessed"
    print(
        f"{dataset.name}: {len(pre.cases)} cases {how} in {time.perf_counter() - started:.1f}s "
        f"(spacing {tuple(round(s, 2) for s in pre.spacing)} mm, classes {list(pre.labels)})",
        file=sys.stderr,
    )
    return dataset, make_task(pre, seed=args.seed)


def read_network_def(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BNRankError(f"--network-def {path}: cannot read a JSON network description ({exc})") from exc


def add_network_flags(p: argparse.ArgumentParser) -> None:
    """--architecture or --network-def: how a checkpoint's network is built, when its keys do not say; and the
    per-checkpoint options (`CandidateOptions`: --head)."""
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--architecture", help="registered architecture (default: recognised from the keys)")
    arch.add_argument("--network-def", help="JSON file describing a MONAI network (allow-listed classes only)")
    add_flags(p, local_options(CandidateOptions))


# -------------------------------------------------------------------------------------------- rank


def cmd_rank(args: argparse.Namespace) -> int:
    from bnrank.engine.logme import LogMEConfig, logme_entry, rank_logme
    from bnrank.engine.ranking import Candidate
    from bnrank.engine.strategies import rank_by_strategy
    from bnrank.engine.verify import control_candidates, format_verify, verify_config, verify_ranking

    threads = configure_threads(threads=args.threads)
    # The ranking budget: RANKING_DEFAULTS under the flags (options without a flag keep the ranking's value too).
    config = ranking_config(**values(args, local_options(TrainConfig)))
    rank = build(RankConfig, args)  # a strategy that cannot run is refused before the dataset is read
    started = time.perf_counter()
    dataset, task = load_task(args)
    prepare_seconds = time.perf_counter() - started  # part of the ranking's cost (the cascade's budget cap)
    network_def = read_network_def(args.network_def)
    candidates = [
        Candidate(name=str(p), path=Path(p), architecture=args.architecture, network_def=network_def, head=args.head)
        for p in args.checkpoints
    ]
    how = "LogME (forward passes only)" if args.method == "logme" else f"{config.max_steps} steps each"
    print(
        f"ranking {len(candidates)} candidate(s) on {len(task.train)} training / {len(task.val)} validation "
        f"cases by {args.method}, {how}, {threads} thread(s)",
        file=sys.stderr,
    )
    progress = progress_printer(args.quiet)
    logme_config = LogMEConfig.from_train_config(config)
    if args.method == "logme":
        result = rank_logme(
            candidates, task, config, dataset_name=str(dataset.root), control=not args.no_control, logme=logme_config
        )
    else:
        result = rank_by_strategy(
            candidates,
            task,
            config,
            rank,
            dataset_name=str(dataset.root),
            control=not args.no_control,
            on_progress=progress,
            prepare_seconds=prepare_seconds,
        )
    payload = result.to_dict()
    payload["method"] = args.method
    logme_scores = None
    if args.method == "both":
        # LogME of the same candidates (and controls) beside the BN-only score; the order stays BN-only's.
        own = {e.checkpoint: e for e in result.entries if not e.is_control}
        paired = [c for c in candidates if c.name in own]
        controls = [] if args.no_control else control_candidates([own[c.name] for c in paired], paired)
        lm = {c.name: logme_entry(c, task, config, logme_config) for c in [*candidates, *controls]}
        logme_scores = {name: e.score for name, e in lm.items()}
        for row in payload["entries"]:
            row["logme"] = logme_scores.get(row["checkpoint"])
        payload["logme"] = _logme_agreement(result.entries, logme_scores)
        payload["logme"]["seconds"] = round(sum(e.seconds for e in lm.values()), 3)
    print_ranking(result, logme_scores)
    if args.method == "both":
        agreement = payload["logme"]
        tau = agreement["kendall_tau"]
        # τ is undefined when one side scores every candidate alike (say hard Dice 0 after a very short budget).
        shown = f"{tau:.2f}" if tau is not None else "undefined (one order is all ties)"
        top1 = {True: "yes", False: "no", None: "n/a"}[agreement["same_top1"]]
        took = f"LogME took {agreement['seconds']:.1f}s"
        print(f"LogME vs BN-only order: Kendall τ = {shown}, same top-1: {top1} ({took})")
    if args.verify:
        vconfig = verify_config(config, steps=args.verify_steps, lr=args.verify_lr)
        report = verify_ranking(result, candidates, task, vconfig, args.verify, on_progress=progress)
        payload["verify"] = report
        print(format_verify(report))
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if any(e.status == "ok" and not e.is_control for e in result.entries) else 1


def _logme_agreement(entries: list[RankEntry], logme: dict[str, float | None]) -> dict[str, Any]:
    """Kendall τ between the BN-only and the LogME order of the entries both scored."""
    from scipy.stats import kendalltau

    both = [e for e in entries if e.status == "ok" and logme.get(e.checkpoint) is not None]
    out: dict[str, Any] = {"kendall_tau": None, "same_top1": None}
    if len(both) >= 2:
        bn = [e.score or 0.0 for e in both]
        lm = [logme[e.checkpoint] for e in both]
        tau = kendalltau(bn, lm).statistic
        out["kendall_tau"] = None if tau != tau else round(float(tau), 4)  # NaN when one side is constant
        out["same_top1"] = max(range(len(both)), key=bn.__getitem__) == max(range(len(both)), key=lm.__getitem__)
    return out


# ----------------------------------------------------------------------------------------- inspect


def _no_gamma(model: nn.Module) -> str:
    """Why a checkpoint has no γ as loaded: no normalisation at all, or normalisations without affine."""
    from bnrank.engine.norms import without_affine

    bare = without_affine(model)
    if not bare:
        return "no normalisation layers (norm-only evaluation refuses this network)"
    kinds = ", ".join(sorted({kind for _, kind in bare}))
    return (
        f"none of its own: {len(bare)} {kinds} norm layer(s) without affine; norm-only evaluation inserts identity "
        "affines after them"
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    from bnrank.engine.fitting import load_checkpoint
    from bnrank.engine.gamma import gamma_stats

    model, report = load_checkpoint(
        args.checkpoint, architecture=args.architecture, network_def=read_network_def(args.network_def),
        head=args.head,
    )
    stats = gamma_stats(model, threshold=args.threshold)
    n_params = sum(p.numel() for p in model.parameters())
    if args.json:
        out = {"checkpoint": args.checkpoint, "load_report": report.to_dict(), "gamma": stats, "n_parameters": n_params}
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"checkpoint:    {args.checkpoint}")
    print(f"architecture:  {report.architecture} {report.build_kwargs}  ({n_params:,} parameters)")
    print(
        f"format:        {report.format}"
        + (f", inside '{report.container}'" if report.container else "")
        + (f", prefixes stripped: {report.stripped_prefixes}" if report.stripped_prefixes else "")
    )
    converted = conversion_line(report.source)
    if converted:
        print(f"conversion:    {converted}")
    print(f"load report:   {report.summary()}")
    for name, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            print(f"  {name}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    s = stats["summary"]
    if s.get("count"):
        print(
            f"γ (raw):       {s['count']} channels in {stats['n_layers']} norm layers ({', '.join(s['kinds'])}); "
            f"|γ| mean {s['mean']:.3f}, "
            f"std {s['std']:.3f}, median {s['quantiles']['0.5']:.3f}; "
            f"{s['share_below']:.1%} under {s['threshold']}"
        )
    else:
        print(f"γ (raw):       {_no_gamma(model)}")
    return 0


# ------------------------------------------------------------------------------- demo-data, pretrain


def cmd_demo_data(args: argparse.Namespace) -> int:
    from bnrank.engine.demo import write_demo

    configure_threads()
    out = write_demo(args.out, n_cases=args.cases, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({k: str(v) if not isinstance(v, list) else [str(x) for x in v] for k, v in out.items()}, indent=2))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from bnrank.engine.pretrain import pretrain_folder

    threads = configure_threads(threads=args.threads)
    config = PretrainConfig(
        build_kwargs={"width": args.width} if args.width else {}, **values(args, local_options(PretrainConfig))
    )
    print(f"pretraining {args.architecture} for {args.steps} steps, {threads} thread(s)", file=sys.stderr)
    path, result = pretrain_folder(args.volumes, args.out, config, on_progress=progress_printer(args.quiet))
    first = result.curve[0]["loss"] if result.curve else result.final_loss
    print(
        f"wrote {path}: {result.n_volumes} volume(s), {result.steps} steps in {result.seconds:.1f}s, "
        f"restoration MSE {first:.4f} -> {result.final_loss:.4f}"
    )
    return 0


# ----------------------------------------------------------------------------------------- parsers


def register(sub: argparse._SubParsersAction) -> None:
    """Add rank, inspect, demo-data and pretrain."""
    p = sub.add_parser("rank", help="rank checkpoints on a dataset by BN-only evaluation")
    p.add_argument("--dataset", required=True, help="nnU-Net v2 raw or Decathlon dataset folder")
    add_network_flags(p)
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--no-control", action="store_true", help="skip the random-init control row")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--method",
        choices=["bnonly", "logme", "both"],
        default="bnonly",
        help="bnonly: BN-only evaluation (default); logme: LogME of the decoder features, forward passes only "
        "(score = evidence per voxel, steps 0); both: rank by BN-only and report LogME beside it",
    )
    p.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="K",
        help="self-check: fine-tune (all parameters, short budget) the top K and the bottom entry and report "
        "whether their fine-tuned order agrees with the ranking",
    )
    p.add_argument("--verify-steps", type=int, default=VERIFY_STEPS, help="fine-tuning steps of --verify (%(default)s)")
    p.add_argument("--verify-lr", type=float, default=VERIFY_LR, help="fine-tuning lr of --verify (%(default)s)")
    add_budget(p, defaults=RANKING_DEFAULTS)
    add_flags(p.add_argument_group("ranking"), local_options(RankConfig))
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("inspect", help="architecture, load report and raw γ statistics of a checkpoint")
    p.add_argument("checkpoint")
    add_network_flags(p)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="|γ| counted as near zero (%(default)s)")
    p.add_argument("--json", help="write the report and γ statistics here")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo-data", help="write the MNI brain MRI demo task and candidate checkpoints")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser(
        "pretrain",
        help="self-supervised Models Genesis pretraining on a folder of unlabeled NIfTI volumes",
        description="Restore corrupted patches (Bézier intensity curve, local pixel shuffling, in-/out-painting) "
        "with MSE; writes a candidate checkpoint. See bnrank/engine/pretrain.py.",
    )
    p.add_argument("--volumes", required=True, help="folder of unlabeled *.nii.gz / *.nii volumes")
    p.add_argument("--width", type=int, default=None, help="unet3d width (default: the architecture's own, 32)")
    # --steps has no default on the command line: a pretraining run's length is the user's call.
    add_flags(p, local_options(PretrainConfig), defaults={"steps": None})
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.set_defaults(func=cmd_pretrain)
