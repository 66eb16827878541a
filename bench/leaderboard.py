"""The leaderboard queries on a large table, before and after migration 0005's indexes (PostgreSQL).

Creates a throwaway database at the head revision, fills it with one owner's rankings among many other
owners' (synthetic rows, no training), drops the two indexes of 0005 and times
`service.core.leaderboard.leaderboard` and `checkpoint_results` (median of repeated calls), creates the
indexes again exactly as 0005 does and times them again, then drops the database.

    .venv/bin/python bench/leaderboard.py [--owners 200] [--jobs-per-owner 50] [--entries-per-job 8]

Each run's medians are written to bench/results/leaderboard/<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from sqlalchemy import text

from service.core.config import Settings
from service.core.db import Database, migrate
from service.core.leaderboard import checkpoint_results, leaderboard
from service.core.models import Checkpoint, Dataset, Job, RankingEntry

RESULTS = Path(__file__).resolve().parent / "results" / "leaderboard"
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"
# What alembic/versions/0005_leaderboard_indexes.py creates, and its downgrade.
CREATE = (
    "CREATE INDEX ix_jobs_owner_kind_dataset_id ON jobs (owner, kind, dataset_id)",
    "CREATE INDEX ix_ranking_entries_checkpoint_id_status ON ranking_entries (checkpoint_id, status)",
)
DROP = ("DROP INDEX ix_jobs_owner_kind_dataset_id", "DROP INDEX ix_ranking_entries_checkpoint_id_status")


def fill(db: Database, owners: int, jobs_per_owner: int, entries_per_job: int) -> tuple[str, str, str]:
    """Rows for ``owners`` owners; returns (owner, dataset id, checkpoint id) of the one the queries ask for."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    target: tuple[str, str, str] | None = None
    with db.session() as session:
        for o in range(owners):
            owner = f"owner{o}"
            datasets = [
                Dataset(
                    owner=owner,
                    name=f"d{d}",
                    uri=f"/data/{o}/{d}",
                    format="nnunet",
                    modality="MR",
                    n_cases=10,
                    fingerprint="0" * 64,
                )
                for d in range(5)
            ]
            ckpts = [
                Checkpoint(
                    owner=owner,
                    name=f"c{c}",
                    sha256=secrets.token_hex(32),
                    size=1,
                    format="safetensors",
                    architecture="unet3d",
                    n_parameters=1,
                    n_bn_channels=1,
                    blob_path="x",
                )
                for c in range(entries_per_job)
            ]
            session.add_all(datasets + ckpts)
            session.flush()
            for j in range(jobs_per_owner):
                job = Job(
                    owner=owner,
                    kind="ranking",
                    status="succeeded",
                    dataset_id=datasets[j % 5].id,
                    created_at=start + timedelta(minutes=j),
                )
                session.add(job)
                session.flush()
                session.add_all(
                    RankingEntry(
                        job_id=job.id,
                        checkpoint_id=c.id,
                        slot=c.id,
                        position=i,
                        name=c.name,
                        architecture="unet3d",
                        status="ok",
                        score=(i * 7 + j) % 13 / 13,
                        steps=100,
                    )
                    for i, c in enumerate(ckpts)
                )
            if target is None:
                target = (owner, datasets[0].id, ckpts[0].id)
            session.commit()
    assert target is not None
    return target


def timed(fn: Callable[[], object], repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=200)
    parser.add_argument("--jobs-per-owner", type=int, default=50)
    parser.add_argument("--entries-per-job", type=int, default=8)
    args = parser.parse_args()
    name = f"bnrank_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    settings = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", broker_url="redis://")
    try:
        migrate(settings)
        db = Database(settings)
        owner, dataset_id, checkpoint_id = fill(db, args.owners, args.jobs_per_owner, args.entries_per_job)
        rows = args.owners * args.jobs_per_owner * args.entries_per_job
        print(
            f"{args.owners} owners × {args.jobs_per_owner} rankings × {args.entries_per_job} entries = {rows} entries"
        )
        measured = []
        for label, statements in (("without 0005's indexes", DROP), ("with 0005's indexes", CREATE)):
            with db.session() as session:
                for statement in [*statements, "ANALYZE"]:
                    session.execute(text(statement))
                session.commit()
            with db.reads() as session:
                board = timed(lambda s=session: leaderboard(s, owner, dataset_id, 50, 0))
                results = timed(lambda s=session: checkpoint_results(s, owner, checkpoint_id, 50, 0))
            print(f"{label}: leaderboard {board:.1f} ms, checkpoint results {results:.1f} ms (median of 20)")
            measured.append(
                {"indexes": label, "leaderboard_ms": round(board, 2), "checkpoint_results_ms": round(results, 2)}
            )
        db.dispose()
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{stamp}.json"
        sizes = {"owners": args.owners, "jobs_per_owner": args.jobs_per_owner, "entries_per_job": args.entries_per_job}
        out.write_text(
            json.dumps({"when": stamp, **sizes, "entries": rows, "medians_of": 20, "runs": measured}, indent=2)
        )
        print(f"wrote {out}")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
