"""The service test stack: a real database, a real broker, a real Celery worker process, a real HTTP server.

When PostgreSQL and Redis answer on localhost (dev machines, CI), each session gets a fresh database
``bnrank_test_<random>`` (migrated with Alembic, dropped at the end) and its own Redis queue and key prefix,
so parallel runs cannot take each other's tasks. Otherwise (or with ``BNRANK_TEST_BACKEND=embedded``) the
embedded defaults are used: SQLite file and kombu's filesystem broker in the session's temp folder.

Every test that uses the stack runs on both blob backends: the folder (the embedded default) and an
S3-compatible object store, moto's standalone server started by the session on 127.0.0.1 (tests/s3server.py).
``BNRANK_TEST_BLOBS=filesystem`` (or ``s3``) keeps one of them.

The API runs in-process under uvicorn on a background thread, so requests go through real HTTP (streamed
uploads, server-sent events) while tests can still build apps with other settings (a tiny upload limit).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI

from bnrank.cli.client import Client
from bnrank.engine.architectures import build_model
from bnrank.engine.checkpoints import save_weights
from service.api.app import create_app
from service.api.auth import create_key
from service.core.config import Settings
from service.core.db import Database, migrate
from service.core.launcher import WorkerProcess
from service.core.objectstore import S3BlobStore, open_blob_store
from tests.engine.volumes import write_nnunet_dataset
from tests.s3server import MotoServer, moto_server

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"
REDIS_URL = "redis://127.0.0.1:6379/0"
TERMINAL = ("succeeded", "failed", "cancelled")

# The smallest budget that still trains, validates twice and exercises the whole path.
TINY_BUDGET = {"max_steps": 4, "patch_size": 16, "batch_size": 2, "val_every": 2, "patience": 4, "precision": "fp32"}


def _postgres_and_redis() -> bool:
    """Whether the service tests use PostgreSQL + Redis (reachable, and not overridden to embedded)."""
    return os.environ.get("BNRANK_TEST_BACKEND") != "embedded" and local_services_reachable()


def local_services_reachable() -> bool:
    """PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 both answer."""
    try:
        import psycopg
        import redis

        with psycopg.connect(PG_ADMIN):
            pass
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception:
        return False
    return True


def pytest_report_header() -> str:
    backend = "PostgreSQL + Redis" if _postgres_and_redis() else "embedded SQLite + filesystem broker"
    return f"bnrank service tests: {backend} (BNRANK_TEST_BACKEND=embedded forces the embedded stack)"


BLOB_BACKENDS = [b for b in os.environ.get("BNRANK_TEST_BLOBS", "filesystem,s3").split(",") if b]


@dataclass
class Stack:
    kind: str
    settings: Settings
    db: Database
    root: Path
    data_root: Path
    outside: Path
    blobs: str = "filesystem"
    s3: MotoServer | None = None

    def stored_size(self, sha256: str) -> int | None:
        """Size of the blob with this sha256 in the stack's store (folder or bucket); None when absent."""
        store = open_blob_store(self.settings)
        rel = store.relpath(sha256)
        if isinstance(store, S3BlobStore):
            try:
                return int(store.client.head_object(Bucket=store.bucket, Key=store.key(rel))["ContentLength"])
            except Exception:
                return None
        path = store.path(rel)
        return path.stat().st_size if path.is_file() else None

    def leftovers(self) -> list[str]:
        """What unfinished uploads left: spool files and, on S3, multipart uploads and temporary objects."""
        found = [str(p) for p in (self.settings.blobs / "tmp").iterdir()]
        store = open_blob_store(self.settings)
        if isinstance(store, S3BlobStore):
            tmp = store.key("tmp/")
            uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=tmp).get("Uploads", [])
            objects = store.client.list_objects_v2(Bucket=store.bucket, Prefix=tmp).get("Contents", [])
            found += [f"multipart upload {u['Key']}" for u in uploads] + [f"object {o['Key']}" for o in objects]
        return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server, one per session (each stack makes its own bucket in it)."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="session", params=BLOB_BACKENDS)
def blob_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    blob_backend: str,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    s3: MotoServer | None = request.getfixturevalue("s3_server") if blob_backend == "s3" else None
    root = tmp_path_factory.mktemp("bnrank")
    data_root, outside = root / "data", root / "outside"
    data_root.mkdir()
    outside.mkdir()
    common: dict[str, Any] = {
        "home": root / "home",
        "data_roots": [data_root],
        "progress_interval_s": 0.3,
        "sse_poll_interval_s": 0.1,
        "worker_concurrency": 1,
        # The worker shares the cores with this process (the API) and, in CI, with whatever else runs:
        # one thread per task avoids the oversubscription that made steps ten times slower here.
        "torch_threads": 1,
        "device": "cpu",
        "log_level": "INFO",
        # Tests that stage a dead worker or a lost message call `service.core.recovery.sweep` themselves; the
        # session worker's own sweep would race them. tests/deploy runs workers with the sweep on.
        "recover_interval_s": 3600,
        # Every test client comes from 127.0.0.1 and several tests provoke 401s on purpose; the limits
        # themselves are tested on apps of their own (test_limits.py).
        "auth_failures_per_minute": 0,
        "submissions_per_minute": 0,
        # Tests read a ranking right after changing it behind the API's back; test_hardening.py tests the
        # short-lived cache of unfinished rankings on an app of its own.
        "live_cache_s": 0,
    }
    if s3 is not None:
        common.update(s3.settings(s3.new_bucket()))
    suffix = secrets.token_hex(4)
    pg_name = None
    if _postgres_and_redis():
        import psycopg

        pg_name = f"bnrank_test_{suffix}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        settings = Settings(
            **common,
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}",
            broker_url=REDIS_URL,
            queue=f"bnrank_test_{suffix}",
            broker_key_prefix=f"bnrank_test_{suffix}:",
        )
        kind = "postgres+redis"
    else:
        settings = Settings(**common, database_url="", broker_url="", queue=f"bnrank_test_{suffix}")
        kind = "embedded"
    settings.ensure_folders()
    migrate(settings)
    db = Database(settings)
    try:
        yield Stack(kind, settings, db, root, data_root, outside, blob_backend, s3)
    finally:
        db.dispose()
        if pg_name is not None:
            import psycopg
            import redis

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{settings.broker_key_prefix}*"):
                client.delete(key)
            client.delete(settings.queue)
            client.close()


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Iterator[WorkerProcess]:
    """A real Celery worker process consuming the session's queue."""
    log_path = stack.root / "worker.log"
    with log_path.open("wb") as log:
        process = WorkerProcess(stack.settings, log=log)
        try:
            process.wait_ready(timeout_s=120)
        except Exception:
            process.stop(grace_s=2)
            raise RuntimeError(f"worker did not start:\n{log_path.read_text(errors='replace')[-3000:]}") from None
        yield process
        process.stop(grace_s=20)


class ThreadedServer:
    """uvicorn serving an app from a background thread on a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        # proxy_headers off, as `bnrank serve` runs it: forwarded headers are the app's (BNRANK_TRUSTED_PROXIES).
        config = uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[str]:
    with ThreadedServer(create_app(stack.settings)) as server:
        yield server.url


@pytest.fixture(scope="session")
def serve_app() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """Start another API (other settings, same database); use as ``with serve_app(settings) as url``."""

    @contextlib.contextmanager
    def start(settings: Settings) -> Iterator[str]:
        with ThreadedServer(create_app(settings)) as server:
            yield server.url

    return start


def new_key(stack: Stack, owner: str) -> str:
    with stack.db.session() as session:
        _, key = create_key(session, owner)
    return key


@pytest.fixture(scope="session")
def alice(stack: Stack, api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {new_key(stack, 'alice')}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def bob(stack: Stack, api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {new_key(stack, 'bob')}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def anonymous(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=60) as c:
        yield c


# ---------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def dataset_dir(stack: Stack) -> Path:
    """4 synthetic MR cases of 24³ voxels, 2 foreground classes, inside the data root."""
    return write_nnunet_dataset(stack.data_root / "Dataset001_Tiny", n_cases=4, shape=(24, 24, 24), n_labels=2)


def make_checkpoint(path: Path, seed: int, scale: float = 1.0) -> Path:
    """A narrow unet3d (width 4) for 1 channel and 3 classes; ``scale`` multiplies every weight."""
    torch.manual_seed(seed)
    model = build_model("unet3d", in_channels=1, out_channels=3, width=4)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return save_weights(model, path)


@pytest.fixture(scope="session")
def checkpoint_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "good_a": make_checkpoint(folder / "good_a.safetensors", seed=1),
        "good_b": make_checkpoint(folder / "good_b.safetensors", seed=2),
        # Finite (so the upload is accepted) but so large that the first forward pass overflows:
        # the ranking must fail this one candidate and still rank the others.
        "exploding": make_checkpoint(folder / "exploding.safetensors", seed=3, scale=1e30),
    }


def upload(client: httpx.Client, path: Path, **fields: str) -> httpx.Response:
    with path.open("rb") as f:
        return client.post("/v1/checkpoints", files={"file": (path.name, f)}, data={"name": path.stem, **fields})


def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll until ``predicate()`` is truthy; returns its value. No fixed sleeps in tests. An exception in
    ``retry_on`` (a server still starting or restarting) counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except retry_on:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def wait_job(client: httpx.Client, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    return wait_for(done, timeout_s, f"job {job_id} to end", interval_s=0.2)


# ------------------------------------------------- one ranking, shared by the ranking, job and worker tests


def key_of(client: httpx.Client) -> str:
    return client.headers["authorization"].split(" ", 1)[1]


@pytest.fixture(scope="session")
def candidates(alice: httpx.Client, checkpoint_files: dict[str, Path]) -> dict[str, str]:
    ids = {}
    for name, path in checkpoint_files.items():
        response = upload(alice, path, modality="MR")
        assert response.status_code in (200, 201), response.text
        ids[name] = response.json()["id"]
    return ids


@pytest.fixture(scope="session")
def dataset_id(alice: httpx.Client, dataset_dir: Path) -> str:
    response = alice.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)})
    assert response.status_code in (200, 201), response.text  # 200: a test registered the folder already
    return response.json()["id"]


@pytest.fixture(scope="session")
def ranked(
    worker: WorkerProcess, api: str, alice: httpx.Client, candidates: dict[str, str], dataset_id: str
) -> dict[str, Any]:
    """One ranking of two good candidates and a broken one, followed over SSE from queueing to the end."""
    response = alice.post(
        "/v1/rankings",
        json={
            "dataset_id": dataset_id,
            "checkpoint_ids": [candidates["good_a"], candidates["exploding"], candidates["good_b"]],
            "budget": TINY_BUDGET,
            "seed": 0,
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/rankings/{job['id']}"
    with Client(api, key_of(alice)) as client:
        events = list(client.events(job["id"]))
    return {"job": job, "events": events, "ranking": alice.get(f"/v1/rankings/{job['id']}").json()}
