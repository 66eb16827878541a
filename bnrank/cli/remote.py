"""`bnrank remote ...`: commands that talk to a running service over HTTP (bnrank/cli/client.py).

A remote job's options are generated from the same engine declarations as the local commands' flags, but
default to None: only what the user gives is sent, and the service fills in the rest with its defaults.
A served ranking's JSON is read back into the engine's plain result types (bnrank/engine/entries.py) and
printed with `bnrank rank`'s table; nothing here imports torch, SQLAlchemy or the service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bnrank.cli.client import TERMINAL, ApiError, Client
from bnrank.cli.options import add_flags, add_remote_budget, remote_budget, remote_options, values
from bnrank.cli.table import print_ranking as print_engine_ranking
from bnrank.engine.configs.alchemy import AlchemyConfig
from bnrank.engine.configs.candidate import CandidateOptions
from bnrank.engine.configs.probe import ProbeConfig
from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.entries import RankingResult, entry_from_view
from bnrank.engine.errors import BNRankError

DEFAULT_URL = "http://127.0.0.1:8000"


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- printing


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(width * max(0.0, min(1.0, fraction)))
    return "#" * filled + "-" * (width - filled)


class ProgressLine:
    """One status line on stderr: redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown: tuple[Any, ...] | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        state = (event.get("status"), event.get("progress"), event.get("message"))
        done = state[0] in TERMINAL
        if state == self.shown or (not done and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.last, self.shown = now, state
        text = f"[{_bar(event.get('progress', 0.0))}] {event.get('progress', 0.0):4.0%} {event.get('status', ''):<9} "
        text += str(event.get("message") or "")[:80]
        end = "\r" if self.tty and not done else "\n"
        sys.stderr.write(f"{text:<130}{end}")
        sys.stderr.flush()


def print_ranking(ranking: dict[str, Any]) -> None:
    """The ranking table of `bnrank rank`, from the service's representation of a ranking."""
    entries = [entry_from_view(e) for e in ranking["entries"]]
    print_engine_ranking(
        RankingResult(
            dataset="",
            entries=entries,
            config={},
            stability=ranking.get("stability") or {},
            ties=ranking.get("ties") or {},
            cascade=ranking.get("cascade"),
        )
    )


def print_probe_job(result: dict[str, Any]) -> None:
    """Per fold: Dice after clipping the γ under each threshold against clipping as many at random."""
    for fold in result["folds"]:
        if fold["status"] != "ok":
            print(f"fold {fold['fold']}: {fold['status']} {fold['error'] or ''}".rstrip())
            continue
        print(f"fold {fold['fold']}: Dice {fold['dice_unclipped']:.3f} unclipped, {fold['n_channels']} BN channels")
        print(f"  {'|γ| <':>7}  {'clipped':>8}  {'Dice (by γ)':>11}  {'Dice (random)':>15}")
        for r in fold["rows"]:
            random = f"{r['dice_random']:.3f} ± {r['dice_random_std']:.3f}"
            print(f"  {r['threshold']:>7g}  {r['share_clipped']:>8.1%}  {r['dice_threshold']:>11.3f}  {random:>15}")


def _print_result(kind: str, result: dict[str, Any], as_json: bool = False) -> None:
    if as_json or kind == "alchemy":
        print(json.dumps(result, indent=2))
    elif kind == "ranking":
        print_ranking(result)
    else:
        print_probe_job(result)


# ------------------------------------------------------------------------------------------- commands


def cmd_remote(args: argparse.Namespace) -> int:
    if not args.key:
        raise BNRankError("no API key: pass --key or set BNRANK_API_KEY (create one with `bnrank keys create`)")
    try:
        with Client(args.url, args.key) as client:
            return _remote(args, client)
    except ApiError as exc:
        raise BNRankError(f"the service refused: {exc.detail} (HTTP {exc.status})") from exc
    except httpx.TransportError as exc:
        raise BNRankError(f"cannot reach the service at {args.url}: {exc}") from exc


def _follow(client: Client, job_id: str) -> dict[str, Any]:
    final = client.wait(job_id, on_progress=ProgressLine())
    _print_result(final["kind"], client.get(final["results"]))
    return final


def _submit(args: argparse.Namespace, client: Client, job: dict[str, Any]) -> int:
    """Print a queued job's id; with --wait follow it to the end and print its result."""
    print(job["id"])
    if args.wait:
        return 0 if _follow(client, job["id"])["status"] == "succeeded" else 1
    return 0


def _job_body(args: argparse.Namespace) -> dict[str, Any]:
    """What every queued alchemy or probe job sends: dataset, checkpoint, folds, budget and (if given) seed."""
    body = {"dataset_id": args.dataset, "checkpoint_id": args.checkpoint, "folds": args.folds}
    body["budget"] = remote_budget(args)
    if args.seed is not None:
        body["seed"] = args.seed
    return body


def _remote(args: argparse.Namespace, client: Client) -> int:
    command = args.remote_command
    if command == "upload":
        for path in args.files:
            ckpt = client.upload_checkpoint(
                path, name=args.name, modality=args.modality, architecture=args.architecture,
                options=values(args, remote_options(CandidateOptions), service_default=True),
            )
            print(f"{ckpt['id']}  {ckpt['name']}  {ckpt['architecture']}  sha256 {ckpt['sha256'][:12]}")
    elif command == "checkpoints":
        page = client.get("/v1/checkpoints", modality=args.modality, architecture=args.architecture, limit=args.limit)
        for c in page["items"]:
            print(f"{c['id']}  {c['architecture']:<18}  {c['modality'] or '-':<5}  {c['name']}")
        info(f"{len(page['items'])} of {page['total']}")
    elif command == "datasets":
        if args.datasets_command == "add":
            ds = client.add_dataset(args.name or Path(args.uri).name, args.uri, modality=args.modality)
            print(f"{ds['id']}  {ds['n_cases']} usable cases  {ds['format']}  {ds['modality']}")
            for problem in ds["problems"]:
                info(f"  left out {problem['case_id']}: {problem['message']}")
        else:
            for ds in client.get("/v1/datasets", limit=args.limit)["items"]:
                print(f"{ds['id']}  {ds['n_cases']:>4} cases  {ds['format']:<6}  {ds['name']}  {ds['uri']}")
    elif command == "rank":
        job = client.rank(
            args.dataset,
            args.checkpoints,
            budget=remote_budget(args),
            seed=args.seed,
            control=not args.no_control,
            ranking=values(args, remote_options(RankConfig), service_default=True),
        )
        return _submit(args, client, job)
    elif command == "alchemy":
        body = {**_job_body(args), **values(args, remote_options(AlchemyConfig), service_default=True)}
        return _submit(args, client, client.post("/v1/alchemy", body))
    elif command == "probe":
        body = {**_job_body(args), **values(args, remote_options(ProbeConfig), service_default=True)}
        return _submit(args, client, client.post("/v1/probes", body))
    elif command == "status":
        job = client.get(f"/v1/jobs/{args.job}")
        if args.follow and job["status"] not in TERMINAL:
            job = client.wait(args.job, on_progress=ProgressLine())
        else:
            ProgressLine()(job)
        if job.get("error"):
            info(f"error: {job['error']}")
        return 0 if job["status"] in ("queued", "running", "succeeded") else 1
    elif command == "results":
        job = client.get(f"/v1/jobs/{args.job}")
        _print_result(job["kind"], client.get(job["results"]), args.json)
    elif command == "cancel":
        job = client.post(f"/v1/jobs/{args.job}/cancel")
        info(f"{job['id']}: cancel requested (status {job['status']})")
    return 0


# ------------------------------------------------------------------------------------------- parsers


def register(sub: argparse._SubParsersAction) -> None:
    """Add `remote` and its subcommands."""
    p = sub.add_parser("remote", help="talk to a running service")
    p.add_argument("--url", default=os.environ.get("BNRANK_URL", DEFAULT_URL), help="BNRANK_URL (%(default)s)")
    p.add_argument("--key", default=os.environ.get("BNRANK_API_KEY"), help="API key (BNRANK_API_KEY)")
    p.set_defaults(func=cmd_remote)
    remote = p.add_subparsers(dest="remote_command", required=True)

    r = remote.add_parser(
        "upload", help="upload checkpoint file(s) or model folders (nnU-Net, MONAI bundle; zipped on the way)"
    )
    r.add_argument("files", nargs="+", metavar="FILE")
    r.add_argument("--name", help="default: the file name")
    r.add_argument("--modality", choices=["CT", "MR", "other"])
    r.add_argument("--architecture", help="default: recognised from the keys")
    add_flags(r, remote_options(CandidateOptions), service_default=True)

    r = remote.add_parser("checkpoints", help="list uploaded checkpoints")
    r.add_argument("--modality")
    r.add_argument("--architecture")
    r.add_argument("--limit", type=int, default=100)

    r = remote.add_parser("datasets", help="register or list datasets")
    datasets = r.add_subparsers(dest="datasets_command", required=True)
    d = datasets.add_parser("add", help="register a dataset folder under the service's data roots")
    d.add_argument("uri", help="folder path as the service sees it")
    d.add_argument("--name")
    d.add_argument("--modality", choices=["CT", "MR", "other"])
    d = datasets.add_parser("list")
    d.add_argument("--limit", type=int, default=100)

    r = remote.add_parser("rank", help="queue a ranking; prints the job id")
    r.add_argument("--dataset", required=True, help="dataset id")
    r.add_argument("--no-control", action="store_true", help="skip the random-init control rows")
    r.add_argument("checkpoints", nargs="+", metavar="CKPT_ID")
    add_flags(
        r.add_argument_group("ranking (strategy, successive halving, ties; service defaults when omitted)"),
        remote_options(RankConfig),
        service_default=True,
    )
    add_remote_budget(r)

    r = remote.add_parser("alchemy", help="queue a network alchemy job; prints the job id")
    _add_job_target(r)
    add_flags(
        r.add_argument_group("alchemy (service defaults when omitted)"),
        remote_options(AlchemyConfig),
        service_default=True,
    )
    add_remote_budget(r)

    r = remote.add_parser("probe", help="queue a γ-clipping probe (thesis Fig. 3.1); prints the job id")
    _add_job_target(r)
    add_flags(
        r.add_argument_group("probe (service defaults when omitted)"), remote_options(ProbeConfig), service_default=True
    )
    add_remote_budget(r)

    r = remote.add_parser("status", help="a job's state; --follow shows a live progress bar until it ends")
    r.add_argument("job")
    r.add_argument("--follow", "-f", action="store_true")

    r = remote.add_parser("results", help="a finished job's results (ranking table, or JSON)")
    r.add_argument("job")
    r.add_argument("--json", action="store_true")

    r = remote.add_parser("cancel", help="cancel a queued or running job")
    r.add_argument("job")


def _add_job_target(r: argparse.ArgumentParser) -> None:
    r.add_argument("--dataset", required=True, help="dataset id")
    r.add_argument("--checkpoint", required=True, help="checkpoint id")
    r.add_argument("--folds", type=int, default=1, help="k-fold cross-validation when above 1 (%(default)s)")
