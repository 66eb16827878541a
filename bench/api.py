"""API speed: latency of reading and queueing rankings under 64 concurrent clients, and a 1 GiB upload.

Against a real `bnrank serve --no-worker` subprocess (uvicorn) on loopback, with PostgreSQL + Redis when
they answer on localhost (else the embedded SQLite + filesystem broker; ``--backend`` forces one):

1. setup: 4 tiny checkpoints uploaded and a tiny dataset registered through the API; one ranking of them
   run to the end by a worker started for that purpose (so the ranking read below has real entries,
   curves and γ rows); the worker is then stopped so the queue only fills during the enqueue test;
2. ``GET /v1/rankings/{id}`` of the finished ranking: 64 keep-alive clients, each sending ``--gets``
   requests back to back (finished results are served from the API's in-process cache);
3. ``POST /v1/rankings`` (4 candidates + control, i.e. 5 tasks sent per request): 64 clients, ``--posts``
   requests each;
4. ``GET /v1/rankings/{id}`` of a queued ranking (read from the database every time), as in 2;
5. a 1 GiB upload (``--upload-mib``) whose bytes are not a checkpoint: it is streamed to the blob store
   and hashed in full, then refused by the format check (422) without loading anything, so the figure is
   the transport + hashing + disk path alone. Peak RSS growth of the API process is read from
   /proc/<pid>/status (VmHWM after resetting it through /proc/<pid>/clear_refs).

The load generator is a minimal asyncio HTTP/1.1 client (pre-encoded requests, keep-alive) and the upload
uses sendfile, so the client takes as little of the 2 cores as possible from the server.

    .venv/bin/python bench/api.py                      # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"get_p99_ms": 25.0, "post_p99_ms": 50.0, "upload_mb_s": 200.0, "upload_rss_mb": 64.0}


# ---------------------------------------------------------------------------------------- HTTP client


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked body); returns the status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _client(host: str, port: int, request: bytes, count: int, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status >= 400:
                errors.append(status)
    finally:
        writer.close()


def load(url: str, request: bytes, clients: int, per_client: int) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[int] = []

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(
            *(_client(host, int(port), request, per_client, latencies, errors) for _ in range(clients))
        )
        return time.perf_counter() - started

    wall = asyncio.run(run())
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": len(errors),
        "rps": len(ordered) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": 1000 * ordered[-1],
    }


def http_request(method: str, path: str, key: str, body: dict[str, Any] | None = None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


# --------------------------------------------------------------------------------------------- upload


def _proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def upload(url: str, key: str, size_mib: int, folder: Path, pid: int) -> dict[str, float]:
    """Send a generated file as multipart with sendfile; returns throughput and the API's RSS growth."""
    path = folder / "upload.bin"
    block = b"NOT A CHECKPOINT" + os.urandom(1024 * 1024 - 16)
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(block)
    size = path.stat().st_size
    boundary = "benchboundary7d1e"
    prefix = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbench\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    suffix = f"\r\n--{boundary}--\r\n".encode()
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/checkpoints HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(prefix) + size + len(suffix)}\r\nConnection: close\r\n\r\n"
    ).encode()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss_before = _proc_status(pid, "VmRSS")
    with socket.create_connection((host, int(port))) as sock, path.open("rb") as f:
        started = time.perf_counter()
        sock.sendall(head + prefix)
        sock.sendfile(f)
        sock.sendall(suffix)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        seconds = time.perf_counter() - started
    status = int(response.split(b" ", 2)[1])
    peak = _proc_status(pid, "VmHWM")
    path.unlink()
    return {
        "status": status,
        "bytes": size,
        "seconds": seconds,
        "mb_s": size / seconds / 1e6,
        "rss_growth_mb": (peak - rss_before) / 1e6,
    }


# ---------------------------------------------------------------------------------------------- setup


def make_settings(backend: str, home: Path, data: Path) -> tuple[Any, Any]:
    """Settings for a throwaway deployment, plus a cleanup function."""
    from service.core.config import Settings
    from service.core.launcher import free_port

    common = {"home": home, "data_roots": [data], "api_port": free_port(), "log_level": "WARNING"}
    if backend == "auto":
        from tests.service.conftest import _postgres_and_redis

        backend = "postgres" if _postgres_and_redis() else "embedded"
    if backend == "embedded":
        return Settings(**common, database_url="", broker_url=""), lambda: None
    import psycopg
    import redis

    name = f"bnrank_bench_{os.getpid()}"
    admin = "host=127.0.0.1 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    settings = Settings(
        **common,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        broker_url="redis://127.0.0.1:6379/0",
        queue=name,
        broker_key_prefix=f"{name}:",
    )

    def cleanup() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in [*client.scan_iter(match=f"{name}:*"), name]:
            client.delete(key)

    return settings, cleanup


def prepare(settings: Any, work: Path) -> tuple[str, str, str, list[str]]:
    """Key, a finished ranking and the ids a new ranking needs, created through the API."""
    from bnrank.cli.client import Client
    from service.api.auth import create_key
    from service.core.db import Database, migrate
    from service.core.launcher import WorkerProcess
    from tests.engine.volumes import write_nnunet_dataset
    from tests.service.conftest import TINY_BUDGET, make_checkpoint

    migrate(settings)
    db = Database(settings)
    with db.session() as session:
        _, key = create_key(session, "bench")
    db.dispose()
    dataset = write_nnunet_dataset(settings.data_roots[0] / "Dataset001_Bench", n_cases=4, shape=(24, 24, 24))
    url = f"http://{settings.api_host}:{settings.api_port}"
    with Client(url, key) as client:
        ids = [client.upload_checkpoint(make_checkpoint(work / f"c{i}.safetensors", seed=i))["id"] for i in range(4)]
        dataset_id = client.add_dataset("bench", str(dataset))["id"]
        with (settings.home / "worker.log").open("wb") as log:
            worker = WorkerProcess(settings, log=log)
            try:
                job = client.rank(dataset_id, ids, budget=TINY_BUDGET)
                final = client.wait(job["id"])
                assert final["status"] == "succeeded", final
            finally:
                worker.stop()
    return url, key, job["id"], [dataset_id, *ids]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["auto", "embedded", "postgres"], default="auto")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--gets", type=int, default=40, help="GET requests per client")
    parser.add_argument("--posts", type=int, default=8, help="POST requests per client")
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    from bnrank.cli.client import Client
    from service.core.launcher import ServeProcess
    from tests.service.conftest import TINY_BUDGET

    work = Path(tempfile.mkdtemp(prefix="bnrank-bench-"))
    (work / "data").mkdir()
    settings, cleanup = make_settings(args.backend, work / "home", work / "data")
    backend = "postgres+redis" if settings.database_url.startswith("postgresql") else "sqlite+filesystem"
    serve = ServeProcess(settings, log_path=work / "serve.log", extra_args=["--no-worker"])
    try:
        serve.wait_ready()
        url, key, job_id, (dataset_id, *ids) = prepare(settings, work)
        # Warm up connection pools and code paths before measuring.
        load(url, http_request("GET", f"/v1/rankings/{job_id}", key), 8, 10)
        gets = load(url, http_request("GET", f"/v1/rankings/{job_id}", key), args.clients, args.gets)
        body = {"dataset_id": dataset_id, "checkpoint_ids": ids, "budget": TINY_BUDGET}
        posts = load(url, http_request("POST", "/v1/rankings", key, body), args.clients, args.posts)
        # An unfinished ranking is read from the database on every request (no cache): the polling case.
        with Client(url, key) as client:
            queued = client.rank(dataset_id, ids, budget=TINY_BUDGET)["id"]
        live = load(url, http_request("GET", f"/v1/rankings/{queued}", key), args.clients, args.gets)
        up = upload(url, key, args.upload_mib, work, serve.process.pid)
    except BaseException:
        print(f"failed; the service log says:\n{serve.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        serve.stop()
        cleanup()
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("GET /v1/rankings/{id} p50 (finished)", f"{gets['p50_ms']:.1f} ms", "", None),
        (
            "GET /v1/rankings/{id} p99 (finished)",
            f"{gets['p99_ms']:.1f} ms",
            "≤ 25 ms",
            gets["p99_ms"] <= TARGETS["get_p99_ms"],
        ),
        ("GET throughput (finished)", f"{gets['rps']:.0f} req/s", "", None),
        ("GET /v1/rankings/{id} p50 (queued)", f"{live['p50_ms']:.1f} ms", "", None),
        (
            "GET /v1/rankings/{id} p99 (queued)",
            f"{live['p99_ms']:.1f} ms",
            "≤ 25 ms",
            live["p99_ms"] <= TARGETS["get_p99_ms"],
        ),
        ("GET throughput (queued)", f"{live['rps']:.0f} req/s", "", None),
        ("POST /v1/rankings p50", f"{posts['p50_ms']:.1f} ms", "", None),
        ("POST /v1/rankings p99", f"{posts['p99_ms']:.1f} ms", "≤ 50 ms", posts["p99_ms"] <= TARGETS["post_p99_ms"]),
        ("POST throughput", f"{posts['rps']:.0f} req/s", "", None),
        (
            f"upload {up['bytes'] / 2**30:.2f} GiB (HTTP {up['status']})",
            f"{up['mb_s']:.0f} MB/s",
            "≥ 200 MB/s",
            up["mb_s"] >= TARGETS["upload_mb_s"],
        ),
        (
            "API peak RSS growth",
            f"{up['rss_growth_mb']:.1f} MB",
            "≤ 64 MB",
            up["rss_growth_mb"] <= TARGETS["upload_rss_mb"],
        ),
    ]
    print(
        f"backend {backend}; {args.clients} clients; {gets['requests'] + live['requests']} GETs "
        f"({gets['errors'] + live['errors']} errors), {posts['requests']} POSTs ({posts['errors']} errors); "
        f"{os.cpu_count()} CPUs (client and server share them)"
    )
    print(f"| {'measure':<38} | {'value':>12} | {'target':>10} | met |")
    print(f"|{'-' * 40}|{'-' * 14}|{'-' * 12}|-----|")
    for name, value, target, ok in rows:
        met = "" if ok is None else ("yes" if ok else "NO")
        print(f"| {name:<38} | {value:>12} | {target:>10} | {met:^3} |")
    if args.json:
        numbers = {"backend": backend, "get_finished": gets, "get_queued": live, "post": posts, "upload": up}
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    errors = gets["errors"] + live["errors"] + posts["errors"]
    return 0 if errors == 0 and up["status"] == 422 else 1


if __name__ == "__main__":
    sys.exit(main())
