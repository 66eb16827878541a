"""Running the service: `bnrank serve`, `worker`, `migrate`, `recover`, `keys` and `demo`.

Deferred imports: each command imports the service stack it uses (FastAPI, SQLAlchemy, Celery, uvicorn and
the settings they read) inside its function, so `bnrank rank` and the other local commands neither pay for
nor depend on it, and `worker.celery_app`, which builds its Celery app from the settings when imported, is
only imported by `bnrank worker`. `demo` imports the engine's demo writer (and torch) the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bnrank.cli.client import Client
from bnrank.cli.options import add_flags, remote_options, values
from bnrank.cli.remote import ProgressLine, info, print_ranking
from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import BNRankError
from bnrank.engine.options import Option
from bnrank.engine.threads import available_cores, configure_threads

DEMO_DATASET = "Dataset501_MNIBrain"
DEMO_CANDIDATES = ("brain_supervised", "brain_early", "brain_damaged", "random_init")


def _safe_url(url: str) -> str:
    """A URL fit for a log line: any password replaced by ***."""
    from sqlalchemy.engine import make_url  # deferred: the service stack (module docstring)
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def _settings(**overrides: Any) -> Any:
    from service.core.config import Settings  # deferred: the service stack (module docstring)

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------------------- serve / worker


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn  # deferred: the service stack (module docstring)

    from service.api.app import create_app
    from service.core.db import migrate
    from service.core.launcher import SupervisedWorker
    from service.core.logs import configure_logging

    settings = _settings(api_host=args.host, api_port=args.port, api_processes=args.processes)
    configure_logging(settings.log_level, settings.log_format)
    settings.ensure_folders()
    migrate(settings)
    info(f"database: {_safe_url(settings.database_url)}")
    info(f"broker:   {_safe_url(settings.broker_url)} (queue {settings.queue})")
    info(f"blobs:    {settings.blobs}; data roots: {', '.join(str(r) for r in settings.data_roots)}")
    base = f"http://{settings.api_host}:{settings.api_port}"
    info(f"api:      {base}/v1 (OpenAPI docs: {base}/docs)")
    info(f"dashboard: {base}/ui/ (sign in with an API key: `bnrank keys create --owner you`)")
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal to the handler that was
    # installed before it started; this one turns it into a normal exit, so the worker is stopped below.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # The embedded worker is restarted when it dies and reported by /readyz; it exits when serve does.
    worker = None if args.no_worker else SupervisedWorker(settings).start()
    processes = settings.api_processes
    if processes > 1:
        # uvicorn's own supervisor: N processes accept on one socket, each builds its app from these variables;
        # their metrics are added up through files (service/api/metrics.py). The worker's state is then watched
        # by this process alone (its log says when it restarts), not by each API process's /readyz.
        info(f"api processes: {processes}")
        os.environ.update(settings.to_env())
        metrics_dir = settings.home / f"metrics-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        app: Any = "service.api.app:create_app"
    else:
        app = create_app(settings)
        app.state.worker = worker
    try:
        uvicorn.run(
            app,
            factory=processes > 1,
            workers=processes if processes > 1 else None,
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            log_config=None,  # configure_logging above: the same text or JSON format as the worker
            access_log=args.access_log,
            # Forwarded headers are read by the app, from BNRANK_TRUSTED_PROXIES only (service/api/app.py):
            # uvicorn's own default would believe any X-Forwarded-For that comes from 127.0.0.1.
            proxy_headers=False,
            # Named rather than left to "auto", which falls back silently to asyncio's loop and the pure-Python
            # h11 parser when these are missing: both are dependencies (pyproject.toml), and uvloop + httptools
            # is what docs/benchmarks.md measures and what service/api/receive.py tunes.
            loop="uvloop" if sys.platform != "win32" else "auto",
            http="httptools",
        )
    except KeyboardInterrupt:
        pass
    finally:
        if processes > 1:
            shutil.rmtree(settings.home / f"metrics-{os.getpid()}", ignore_errors=True)
        if worker is not None:
            info("stopping the worker")
            worker.stop()
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def cmd_worker(args: argparse.Namespace) -> int:
    from service.core.config import get_settings  # deferred: the service stack (module docstring)
    from service.core.launcher import worker_command

    for name, value in (("WORKER_CONCURRENCY", args.concurrency), ("WORKER_POOL", args.pool)):
        if value is not None:
            os.environ[f"BNRANK_{name}"] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_folders()
    from worker.celery_app import app  # after the variables above: it reads the settings when imported

    app.worker_main(argv=worker_command(settings, args.loglevel)[5:])
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.core.db import migrate  # deferred: the service stack (module docstring)

    settings = _settings()
    migrate(settings, args.revision)
    info(f"{_safe_url(settings.database_url)}: at revision {args.revision}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    """One recovery sweep now (workers run one every BNRANK_RECOVER_INTERVAL_S): for operators after an
    outage, or where no worker is up to notice."""
    from service.core.broker import BrokerProbe  # deferred: the service stack (module docstring)
    from service.core.celery_app import make_celery
    from service.core.db import Database
    from service.core.recovery import sweep

    settings = _settings()
    celery = make_celery(settings)
    db, probe = Database(settings, pool_size=1), BrokerProbe(settings, celery)
    try:
        report = sweep(db, celery, settings, probe.pending_task_ids)
    finally:
        probe.close()
        db.dispose()
    info(
        f"re-sent {len(report.orphaned)} orphaned and {len(report.lost)} lost task(s); "
        f"closed {len(report.closed)} finished job(s)"
    )
    return 0


def cmd_blobs(args: argparse.Namespace) -> int:
    """Blobs no row refers to: listed (dry run), or deleted once older than the grace period."""
    from service.core.db import Database  # deferred: the service stack (module docstring)
    from service.core.objectstore import open_blob_store
    from service.core.orphans import sweep_orphans

    settings = _settings()
    grace_s = settings.orphan_grace_s if args.grace_s is None else args.grace_s
    db = Database(settings, pool_size=1)
    try:
        with db.session() as session:
            report = sweep_orphans(session, open_blob_store(settings), grace_s=grace_s, delete=args.delete)
    finally:
        db.dispose()
    for orphan in report.orphans:
        print(f"{orphan.relpath}  {orphan.size:>12,} bytes  {orphan.age_s / 3600:8.1f} h old")
    verb = f"deleted {len(report.deleted)} (older than {grace_s:g} s)" if args.delete else "dry run: nothing deleted"
    info(
        f"{len(report.orphans)} orphaned blob(s), {report.orphan_bytes:,} bytes; {report.kept_in_use} in use; {verb}"
    )
    return 0


# ----------------------------------------------------------------------------------------------- keys


def cmd_keys(args: argparse.Namespace) -> int:
    from sqlalchemy import select  # deferred: the service stack (module docstring)

    from service.api.auth import create_key, revoke_key
    from service.core.db import Database, migrate
    from service.core.models import ApiKey

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
                info(f"created key {row.id} for owner {row.owner!r}; it is shown once, store it now:")
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
                info(f"revoked {args.key_id}")
    finally:
        db.dispose()
    return 0


# ----------------------------------------------------------------------------------------------- demo


def _demo_ready(out: Path) -> bool:
    dataset = out / DEMO_DATASET / "dataset.json"
    return dataset.is_file() and all((out / "candidates" / f"{n}.safetensors").is_file() for n in DEMO_CANDIDATES)


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole service path on the embedded defaults: serve, key, uploads, dataset, ranking, table."""
    from bnrank.engine.demo import write_demo  # deferred: the engine's runtime (torch)
    from service.api.auth import create_key  # deferred: the service stack (module docstring)
    from service.core.db import Database, migrate
    from service.core.launcher import ServeProcess, free_port

    budget = values(args, _demo_budget_options(), service_default=True)
    out = Path(args.out).absolute()
    if _demo_ready(out):
        info(f"demo data: {out} (already there)")
    else:
        configure_threads()  # nothing else runs yet: every core
        info(f"writing the demo data to {out} ...")
        write_demo(out, log=info)

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
        info(f"service up at {serve.url} in {time.perf_counter() - started:.1f}s (log: {serve.log_path})")
        with Client(serve.url, key) as client:
            ids = []
            for name in DEMO_CANDIDATES:
                ckpt = client.upload_checkpoint(out / "candidates" / f"{name}.safetensors", name=name, modality="MR")
                ids.append(ckpt["id"])
                info(f"uploaded {name:<17} {ckpt['id']}  {ckpt['architecture']}  {ckpt['n_parameters']:,} parameters")
            dataset = client.add_dataset("MNI brain tissue (demo)", str(out / DEMO_DATASET))
            info(f"registered dataset {dataset['id']}: {dataset['n_cases']} cases, classes {list(dataset['labels'])}")
            job = client.rank(dataset["id"], ids, budget=budget or None)
            info(f"ranking queued: job {job['id']}")
            final = client.wait(job["id"], on_progress=ProgressLine())
            ranking = client.get(f"/v1/rankings/{job['id']}")
        print_ranking(ranking)
        info(f"{final['status']} in {time.perf_counter() - started:.0f}s since the service started")
        dashboard = f"{serve.url}/ui/rankings/{job['id']}"
        if args.keep_serving:
            info(f"\nservice: {serve.url}  (OpenAPI docs: {serve.url}/docs)\nAPI key: {key}")
            info(f"dashboard: {dashboard}  (sign in with the API key above)\nCtrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                serve.process.wait()
        else:
            info(
                f"dashboard: {dashboard} (the service stops with the demo: `bnrank demo --keep-serving` "
                "keeps it up and prints the API key to sign in with)"
            )
        return 0 if final["status"] == "succeeded" else 1
    finally:
        serve.stop()


def _demo_budget_options() -> list[Option]:
    """The one budget option `bnrank demo` offers: steps per candidate (the service's default when omitted)."""
    return [o for o in remote_options(TrainConfig) if o.name == "max_steps"]


# ------------------------------------------------------------------------------------------- parsers


def register(sub: argparse._SubParsersAction) -> None:
    """Add serve, worker, migrate, recover, keys and demo."""
    p = sub.add_parser("serve", help="run the REST API (and a worker beside it); settings from BNRANK_* variables")
    p.add_argument("--host", help="listen address (BNRANK_API_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (BNRANK_API_PORT, default 8000)")
    p.add_argument("--processes", type=int, help="API processes behind the port (BNRANK_API_PROCESSES, default 1)")
    p.add_argument("--no-worker", action="store_true", help="API only; workers run elsewhere (`bnrank worker`)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker for the service (settings from BNRANK_* variables)")
    p.add_argument(
        "--concurrency", type=int, help="tasks at once (BNRANK_WORKER_CONCURRENCY; default: one per GPU, else 1)"
    )
    p.add_argument("--pool", choices=["prefork", "solo", "threads"], help="Celery pool (BNRANK_WORKER_POOL)")
    p.add_argument("--loglevel", help="default: BNRANK_LOG_LEVEL")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="bring the service database schema up to date (Alembic)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("recover", help="re-send work whose broker message was lost or whose worker died")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("blobs", help="blob store upkeep: find (and delete) blobs no record refers to")
    blobs = p.add_subparsers(dest="blobs_command", required=True)
    b = blobs.add_parser("sweep", help="list orphaned blobs; with --delete, delete those past the grace period")
    b.add_argument("--delete", action="store_true", help="delete orphans older than the grace period")
    b.add_argument("--grace-s", type=float, help="grace period in seconds (default: BNRANK_ORPHAN_GRACE_S)")
    p.set_defaults(func=cmd_blobs)

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
    budget = p.add_argument_group("budget (service defaults when omitted)")
    add_flags(budget, _demo_budget_options(), service_default=True)
    p.add_argument("--concurrency", type=int, default=0, help="tasks the worker runs at once (default: one per core)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per task (%(default)s; concurrency × threads above the cores runs many times slower)",
    )
    p.set_defaults(func=cmd_demo)
