"""`bnrank serve`, `worker`, `migrate`, `keys`, `demo` and `remote ...` (registered into bnrank.cli's parser).

Imports of the service stack happen inside the commands, so `bnrank rank` and friends keep working (and
starting fast) without touching FastAPI, SQLAlchemy or Celery.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bnrank.engine.errors import BNRankError

DEFAULT_URL = "http://127.0.0.1:8000"
DEMO_DATASET = "Dataset501_MNIBrain"
DEMO_CANDIDATES = ("brain_supervised", "brain_early", "brain_damaged", "random_init")


def _info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _safe_url(url: str) -> str:
    """A URL fit for a log line: any password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def _settings(**overrides: Any) -> Any:
    from service.config import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------------------- serve / worker


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.db import migrate
    from service.launcher import WorkerProcess
    from service.logs import configure_logging
    from service.main import create_app

    settings = _settings(api_host=args.host, api_port=args.port)
    configure_logging(settings.log_level, settings.log_format)
    settings.ensure_folders()
    migrate(settings)
    _info(f"database: {_safe_url(settings.database_url)}")
    _info(f"broker:   {_safe_url(settings.broker_url)} (queue {settings.queue})")
    _info(f"blobs:    {settings.blobs}; data roots: {', '.join(str(r) for r in settings.data_roots)}")
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal to the handler that was
    # installed before it started; this one turns it into a normal exit, so the worker is stopped below.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    worker = None if args.no_worker else WorkerProcess(settings)
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            log_config=None,  # configure_logging above: the same text or JSON format as the worker
            access_log=args.access_log,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            _info("stopping the worker")
            worker.stop()
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def cmd_worker(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.launcher import worker_command

    for name, value in (("WORKER_CONCURRENCY", args.concurrency), ("WORKER_POOL", args.pool)):
        if value is not None:
            os.environ[f"BNRANK_{name}"] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_folders()
    from worker.celery_app import app

    app.worker_main(argv=worker_command(settings, args.loglevel)[5:])
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.db import migrate

    settings = _settings()
    migrate(settings, args.revision)
    _info(f"{_safe_url(settings.database_url)}: at revision {args.revision}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    """One recovery sweep now (workers run one every BNRANK_RECOVER_INTERVAL_S): for operators after an
    outage, or where no worker is up to notice."""
    from service.broker import BrokerProbe
    from service.db import Database
    from service.recovery import sweep
    from worker.celery_app import make_celery

    settings = _settings()
    celery = make_celery(settings)
    db, probe = Database(settings, pool_size=1), BrokerProbe(settings, celery)
    try:
        report = sweep(db, celery, settings, probe.pending_task_ids)
    finally:
        probe.close()
        db.dispose()
    _info(
        f"re-sent {len(report.orphaned)} orphaned and {len(report.lost)} lost task(s); "
        f"closed {len(report.closed)} finished job(s)"
    )
    return 0


# ----------------------------------------------------------------------------------------------- keys


def cmd_keys(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from service.auth import create_key, revoke_key
    from service.db import Database, migrate
    from service.models import ApiKey

    settings = _settings()
    migrate(settings)
    db = Database(settings)
    try:
        with db.session() as session:
            if args.keys_command == "create":
                try:
                    row, plain = create_key(session, args.owner)
                except ValueError as exc:
                    raise BNRankError(str(exc)) from exc
                _info(f"created key {row.id} for owner {row.owner!r}; it is shown once, store it now:")
                print(plain)
            elif args.keys_command == "list":
                query = select(ApiKey).order_by(ApiKey.created_at)
                if args.owner:
                    query = query.where(ApiKey.owner == args.owner)
                for key in session.scalars(query):
                    state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                    print(f"{key.id}  {key.prefix}…  {key.owner:<20}  {key.created_at:%Y-%m-%d %H:%M}  {state}")
            elif not revoke_key(session, args.key_id):
                raise BNRankError(f"no active key with id {args.key_id!r}")
            else:
                _info(f"revoked {args.key_id}")
    finally:
        db.dispose()
    return 0


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
        done = state[0] in ("succeeded", "failed", "cancelled")
        if state == self.shown or (not done and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.last, self.shown = now, state
        text = f"[{_bar(event.get('progress', 0.0))}] {event.get('progress', 0.0):4.0%} {event.get('status', ''):<9} "
        text += str(event.get("message") or "")[:80]
        end = "\r" if self.tty and not done else "\n"
        sys.stderr.write(f"{text:<130}{end}")
        sys.stderr.flush()


def print_ranking(ranking: dict[str, Any]) -> None:
    """The ranking table of `bnrank rank` (bnrank.cli.print_ranking), from the REST representation."""
    from bnrank.cli import print_ranking as print_engine_ranking
    from bnrank.engine.ranking import RankEntry, RankingResult

    entries = [
        RankEntry(
            checkpoint=e["name"],
            status=e["status"],
            rank=e["rank"],
            score=e["score"],
            dice_per_class=e["dice_per_class"],
            gamma={"after": {"summary": e["gamma"]["after_bn"]}} if "after_bn" in e["gamma"] else {},
            steps=e["steps"],
            seconds=e["seconds"],
            error=e["error"] or (None if e["status"] == "ok" else e["status"]),
            is_control=e["is_control"],
        )
        for e in ranking["entries"]
    ]
    print_engine_ranking(
        RankingResult(dataset="", entries=entries, config={}, stability=ranking.get("stability") or {})
    )


# ----------------------------------------------------------------------------------------------- demo


def _demo_ready(out: Path) -> bool:
    dataset = out / DEMO_DATASET / "dataset.json"
    return dataset.is_file() and all((out / "candidates" / f"{n}.safetensors").is_file() for n in DEMO_CANDIDATES)


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole service path on the embedded defaults: serve, key, uploads, dataset, ranking, table."""
    from bnrank.engine.threads import available_cores
    from service.auth import create_key
    from service.client import Client
    from service.db import Database, migrate
    from service.launcher import ServeProcess, free_port

    out = Path(args.out).absolute()
    if _demo_ready(out):
        _info(f"demo data: {out} (already there)")
    else:
        from bnrank.engine.demo import write_demo
        from bnrank.engine.threads import configure_threads

        configure_threads()  # nothing else runs yet: every core
        _info(f"writing the demo data to {out} ...")
        write_demo(out, log=_info)

    # Embedded defaults, self-contained under the demo folder; a BNRANK_DATABASE_URL in the caller's
    # environment must not send the demo to a production database.
    settings = _settings(
        home=out / ".bnrank",
        database_url="",
        broker_url="",
        blob_dir=out / ".bnrank" / "blobs",
        cache_dir=out / ".bnrank" / "cache",
        data_roots=[out],
        api_host="127.0.0.1",
        api_port=args.port or free_port(),
        # One single-threaded task per core ranked the most candidates per hour on CPU (bench/sizing.py:
        # 2 × 1 thread beat 1 × 2 threads by 24 % on 2 cores; 2 × 2 was 3.4 × slower).
        worker_concurrency=args.concurrency or available_cores(),
        torch_threads=args.threads,
    )
    settings.ensure_folders()
    migrate(settings)
    db = Database(settings)
    with db.session() as session:
        _, key = create_key(session, "demo")
    db.dispose()

    started = time.perf_counter()
    serve = ServeProcess(settings, log_path=settings.home / "serve.log")
    try:
        serve.wait_ready()
        _info(f"service up at {serve.url} in {time.perf_counter() - started:.1f}s (log: {serve.log_path})")
        with Client(serve.url, key) as client:
            ids = []
            for name in DEMO_CANDIDATES:
                ckpt = client.upload_checkpoint(out / "candidates" / f"{name}.safetensors", name=name, modality="MR")
                ids.append(ckpt["id"])
                _info(f"uploaded {name:<17} {ckpt['id']}  {ckpt['architecture']}  {ckpt['n_parameters']:,} parameters")
            dataset = client.add_dataset("MNI brain tissue (demo)", str(out / DEMO_DATASET))
            _info(f"registered dataset {dataset['id']}: {dataset['n_cases']} cases, classes {list(dataset['labels'])}")
            job = client.rank(dataset["id"], ids, budget=_demo_budget(args))
            _info(f"ranking queued: job {job['id']}")
            final = client.wait(job["id"], on_progress=ProgressLine())
            ranking = client.get(f"/v1/rankings/{job['id']}")
        print_ranking(ranking)
        _info(f"{final['status']} in {time.perf_counter() - started:.0f}s since the service started")
        if args.keep_serving:
            _info(f"\nservice: {serve.url}  (OpenAPI docs: {serve.url}/docs)\nAPI key: {key}\nCtrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                serve.process.wait()
        return 0 if final["status"] == "succeeded" else 1
    finally:
        serve.stop()


def _demo_budget(args: argparse.Namespace) -> dict[str, Any] | None:
    return {"max_steps": args.max_steps} if args.max_steps else None


# --------------------------------------------------------------------------------------------- remote


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client

    if not args.key:
        raise BNRankError("no API key: pass --key or set BNRANK_API_KEY (create one with `bnrank keys create`)")
    return Client(args.url, args.key)


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_steps", "patch_size", "batch_size", "val_every", "patience", "lr", "precision")
    budget = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "patch_size" in budget and len(budget["patch_size"]) == 1:
        budget["patch_size"] = budget["patch_size"][0]
    return budget


RESULT_PATHS = {"ranking": "/v1/rankings", "alchemy": "/v1/alchemy", "probe": "/v1/probes"}


def _print_result(kind: str, result: dict[str, Any], as_json: bool = False) -> None:
    if as_json or kind == "alchemy":
        print(json.dumps(result, indent=2))
    elif kind == "ranking":
        print_ranking(result)
    else:
        print_probe_job(result)


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


def _follow(client: Any, job_id: str) -> dict[str, Any]:
    final = client.wait(job_id, on_progress=ProgressLine())
    _print_result(final["kind"], client.get(f"{RESULT_PATHS[final['kind']]}/{job_id}"))
    return final


def cmd_remote(args: argparse.Namespace) -> int:
    import httpx

    from service.client import ApiError

    try:
        with _client(args) as client:
            return _remote(args, client)
    except ApiError as exc:
        raise BNRankError(f"the service refused: {exc.detail} (HTTP {exc.status})") from exc
    except httpx.TransportError as exc:
        raise BNRankError(f"cannot reach the service at {args.url}: {exc}") from exc


def _remote(args: argparse.Namespace, client: Any) -> int:
    command = args.remote_command
    if command == "upload":
        for path in args.files:
            ckpt = client.upload_checkpoint(
                path, name=args.name, modality=args.modality, architecture=args.architecture
            )
            print(f"{ckpt['id']}  {ckpt['name']}  {ckpt['architecture']}  sha256 {ckpt['sha256'][:12]}")
    elif command == "checkpoints":
        page = client.get("/v1/checkpoints", modality=args.modality, architecture=args.architecture, limit=args.limit)
        for c in page["items"]:
            print(f"{c['id']}  {c['architecture']:<18}  {c['modality'] or '-':<5}  {c['name']}")
        _info(f"{len(page['items'])} of {page['total']}")
    elif command == "datasets":
        if args.datasets_command == "add":
            ds = client.add_dataset(args.name or Path(args.uri).name, args.uri, modality=args.modality)
            print(f"{ds['id']}  {ds['n_cases']} usable cases  {ds['format']}  {ds['modality']}")
            for problem in ds["problems"]:
                _info(f"  left out {problem['case_id']}: {problem['message']}")
        else:
            for ds in client.get("/v1/datasets", limit=args.limit)["items"]:
                print(f"{ds['id']}  {ds['n_cases']:>4} cases  {ds['format']:<6}  {ds['name']}  {ds['uri']}")
    elif command == "rank":
        job = client.rank(
            args.dataset, args.checkpoints, budget=_budget(args), seed=args.seed, control=not args.no_control
        )
        print(job["id"])
        if args.wait:
            return 0 if _follow(client, job["id"])["status"] == "succeeded" else 1
    elif command == "alchemy":
        body = {"dataset_id": args.dataset, "checkpoint_id": args.checkpoint, "mode": args.mode, "folds": args.folds}
        body.update({"budget": _budget(args), "seed": args.seed})
        for name in ("identification", "modification", "maximization"):
            if getattr(args, f"no_{name}"):
                body[name] = False
        job = client.post("/v1/alchemy", body)
        print(job["id"])
        if args.wait:
            return 0 if _follow(client, job["id"])["status"] == "succeeded" else 1
    elif command == "probe":
        body = {"dataset_id": args.dataset, "checkpoint_id": args.checkpoint, "folds": args.folds}
        body.update({"budget": _budget(args), "seed": args.seed, "draws": args.draws})
        if args.thresholds:
            body["thresholds"] = args.thresholds
        job = client.post("/v1/probes", body)
        print(job["id"])
        if args.wait:
            return 0 if _follow(client, job["id"])["status"] == "succeeded" else 1
    elif command == "status":
        job = client.get(f"/v1/jobs/{args.job}")
        if args.follow and job["status"] not in ("succeeded", "failed", "cancelled"):
            job = client.wait(args.job, on_progress=ProgressLine())
        else:
            ProgressLine()(job)
        if job.get("error"):
            _info(f"error: {job['error']}")
        return 0 if job["status"] in ("queued", "running", "succeeded") else 1
    elif command == "results":
        job = client.get(f"/v1/jobs/{args.job}")
        _print_result(job["kind"], client.get(f"{RESULT_PATHS[job['kind']]}/{args.job}"), args.json)
    elif command == "cancel":
        job = client.post(f"/v1/jobs/{args.job}/cancel")
        _info(f"{job['id']}: cancel requested (status {job['status']})")
    return 0


# ------------------------------------------------------------------------------------------- parsers


def _add_remote_budget(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget (service defaults when omitted)")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--patch-size", type=int, nargs="+")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--val-every", type=int)
    g.add_argument("--patience", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--wait", action="store_true", help="follow progress and print the result")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service-side subcommands."""
    p = sub.add_parser("serve", help="run the REST API (and a worker beside it); settings from BNRANK_* variables")
    p.add_argument("--host", help="listen address (BNRANK_API_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (BNRANK_API_PORT, default 8000)")
    p.add_argument("--no-worker", action="store_true", help="API only; workers run elsewhere (`bnrank worker`)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker for the service (settings from BNRANK_* variables)")
    p.add_argument("--concurrency", type=int, help="tasks at once (BNRANK_WORKER_CONCURRENCY, default 1)")
    p.add_argument("--pool", choices=["prefork", "solo", "threads"], help="Celery pool (BNRANK_WORKER_POOL)")
    p.add_argument("--loglevel", help="default: BNRANK_LOG_LEVEL")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="bring the service database schema up to date (Alembic)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("recover", help="re-send work whose broker message was lost or whose worker died")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("keys", help="manage API keys of the service")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="create a key for an owner and print it (once)")
    k.add_argument("--owner", required=True)
    k = keys.add_parser("list", help="list keys (never the keys themselves)")
    k.add_argument("--owner")
    k = keys.add_parser("revoke", help="revoke a key by id")
    k.add_argument("key_id")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("demo", help="the demo through the service: serve, upload, register, rank, print")
    p.add_argument("--out", default="demo", help="demo folder (%(default)s); data is written once")
    p.add_argument("--keep-serving", action="store_true", help="leave the service running afterwards")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.add_argument("--max-steps", type=int, default=0, help="budget per candidate (default: the engine's)")
    p.add_argument(
        "--concurrency", type=int, default=0, help="tasks the worker runs at once (default: one per core)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per task (%(default)s; concurrency × threads above the cores runs many times slower)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("remote", help="talk to a running service")
    p.add_argument("--url", default=os.environ.get("BNRANK_URL", DEFAULT_URL), help="BNRANK_URL (%(default)s)")
    p.add_argument("--key", default=os.environ.get("BNRANK_API_KEY"), help="API key (BNRANK_API_KEY)")
    p.set_defaults(func=cmd_remote)
    remote = p.add_subparsers(dest="remote_command", required=True)

    r = remote.add_parser("upload", help="upload checkpoint file(s)")
    r.add_argument("files", nargs="+", metavar="FILE")
    r.add_argument("--name", help="default: the file name")
    r.add_argument("--modality", choices=["CT", "MR", "other"])
    r.add_argument("--architecture", help="default: recognised from the keys")

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
    _add_remote_budget(r)

    r = remote.add_parser("alchemy", help="queue a network alchemy job; prints the job id")
    r.add_argument("--dataset", required=True, help="dataset id")
    r.add_argument("--checkpoint", required=True, help="checkpoint id")
    r.add_argument("--mode", choices=["alchemy", "finetune", "scratch"], default="alchemy")
    r.add_argument("--folds", type=int, default=1)
    for name in ("identification", "modification", "maximization"):
        r.add_argument(f"--no-{name}", action="store_true", help=f"switch {name} off")
    _add_remote_budget(r)

    r = remote.add_parser("probe", help="queue a γ-clipping probe (thesis Fig. 3.1); prints the job id")
    r.add_argument("--dataset", required=True, help="dataset id")
    r.add_argument("--checkpoint", required=True, help="checkpoint id")
    r.add_argument("--thresholds", type=float, nargs="+", help="|γ| cut-offs (default: the engine's)")
    r.add_argument("--draws", type=int, default=3, help="random clippings per threshold (%(default)s)")
    r.add_argument("--folds", type=int, default=1)
    _add_remote_budget(r)

    r = remote.add_parser("status", help="a job's state; --follow shows a live progress bar until it ends")
    r.add_argument("job")
    r.add_argument("--follow", "-f", action="store_true")

    r = remote.add_parser("results", help="a finished job's results (ranking table, or JSON)")
    r.add_argument("job")
    r.add_argument("--json", action="store_true")

    r = remote.add_parser("cancel", help="cancel a queued or running job")
    r.add_argument("job")
