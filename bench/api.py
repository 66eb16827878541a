"""API speed: latency of reading and queueing rankings under 16 and 64 concurrent clients, and a 1 GiB upload.

Against a real `bnrank serve --no-worker` subprocess (uvicorn) on loopback, with PostgreSQL + Redis when
they answer on localhost (else the embedded SQLite + filesystem broker; ``--backend`` forces one):

1. setup: 4 tiny checkpoints uploaded and a tiny dataset registered through the API; one ranking of them
   run to the end by a worker started for that purpose (so the ranking read below has real entries,
   curves and γ rows); the worker is then stopped so the queue only fills during the enqueue test;
2. ``GET /v1/rankings/{id}`` of the finished ranking: ``--clients`` keep-alive clients (16 and 64 by
   default, each count in turn), each sending ``--gets`` requests back to back (finished results are
   served from the API's in-process cache);
3. ``POST /v1/rankings`` (4 candidates + control, i.e. 5 tasks sent per request): the same clients,
   ``--posts`` requests each;
4. ``GET /v1/rankings/{id}`` of a queued ranking, as in 2 (``--py-spy DIR`` samples the server with py-spy
   during each of steps 2-5, at the last client count, and prints the functions it spent its time in);
5. a 1 GiB upload (``--upload-mib``) whose bytes are not a checkpoint: it is streamed to the blob store
   and hashed in full, then refused by the format check (422) without loading anything, so the figure is
   the transport + hashing + disk path alone. Sent twice: as the raw body (``application/octet-stream``,
   the fast path; the target applies to it) and as a multipart form (beside it, for comparison). Peak RSS
   growth of the API process is read from /proc/<pid>/status (VmHWM after resetting it through
   /proc/<pid>/clear_refs). Beside it, the machine's one-core sha256 rate (hashlib over 256 MiB in this
   process): the upload target is 0.8 × that.

The rate limits are off for the run (``BNRANK_SUBMISSIONS_PER_MINUTE=0``): this measures the service, not
its abuse controls. The numbers are also written as JSON (``--json``, default
bench/results/api/<UTC time>.json).

The load generator is a minimal asyncio HTTP/1.1 client (pre-encoded requests, keep-alive) and the upload
uses sendfile, so the client takes as little of the 2 cores as possible from the server.

    .venv/bin/python bench/api.py                      # about two minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"get_p99_ms": 25.0, "post_p99_ms": 100.0, "upload_share_of_sha256": 0.8, "upload_rss_mb": 64.0}
RESULTS = ROOT / "bench" / "results" / "api"


def sha256_rate(mib: int = 256) -> float:
    """MB/s of hashlib's sha256 on one core: the ceiling of an upload that is hashed as it arrives."""
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(mib):
        digest.update(block)
    return mib * 1024 * 1024 / (time.perf_counter() - started) / 1e6


def top_frames(raw: Path, n: int = 12) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive shares of samples per function, from py-spy's collapsed-stack output."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames or frames[-1].startswith(("select ", "epoll_wait", "poll ")):  # idle threads
            continue
        samples = int(count)
        total += samples
        self_time[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    share = {k: v / max(total, 1) for k, v in self_time.items()}
    return {
        "self": [(k, round(v, 4)) for k, v in sorted(share.items(), key=lambda kv: -kv[1])[:n]],
        "inclusive": [(k, round(v / max(total, 1), 4)) for k, v in inclusive.most_common(n * 3)],
        "samples": [("busy", total)],
    }


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


def write_upload_file(size_mib: int, folder: Path) -> Path:
    """The bytes to upload: random, not a checkpoint (refused by the format check after hashing)."""
    path = folder / "upload.bin"
    block = b"NOT A CHECKPOINT" + os.urandom(1024 * 1024 - 16)
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(block)
    return path


def upload(url: str, key: str, path: Path, pid: int, *, raw: bool) -> dict[str, float]:
    """Send ``path`` with sendfile, as the raw body (``raw``, the CLI's way) or as a multipart form;
    returns throughput and the API's RSS growth."""
    size = path.stat().st_size
    boundary = "benchboundary7d1e"
    if raw:
        prefix = suffix = b""
        target, content_type = "/v1/checkpoints?name=bench", "application/octet-stream"
    else:
        prefix = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbench\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        suffix = f"\r\n--{boundary}--\r\n".encode()
        target, content_type = "/v1/checkpoints", f"multipart/form-data; boundary={boundary}"
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST {target} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\n"
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

    common = {
        "home": home,
        "data_roots": [data],
        "api_port": free_port(),
        "log_level": "WARNING",
        "submissions_per_minute": 0,
        "auth_failures_per_minute": 0,
    }
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


class Spy:
    """py-spy sampling the server over one step, written as collapsed stacks (``--py-spy DIR``)."""

    def __init__(self, folder: Path | None, pid: int) -> None:
        self.folder = folder
        self.pid = pid

    @contextlib.contextmanager
    def sampling(self, step: str) -> Iterator[None]:
        if self.folder is None:
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        recorder = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--output",
                str(self.folder / f"{step}.txt"),
                "--threads",
                "--nonblocking",
                "--rate",
                "200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        try:
            yield
        finally:
            recorder.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
            recorder.wait(timeout=60)

    def profiles(self) -> dict[str, Any]:
        if self.folder is None:
            return {}
        return {raw.stem: top_frames(raw) for raw in sorted(self.folder.glob("*.txt"))}


def measure(
    url: str, key: str, job_id: str, body: dict[str, Any], queued: str, clients: int, args: Any, spy: Spy
) -> dict[str, Any]:
    """The three latency measurements at one client count, each sampled by ``spy`` when it samples."""
    with spy.sampling("get_finished"):
        gets = load(url, http_request("GET", f"/v1/rankings/{job_id}", key), clients, args.gets)
    with spy.sampling("post"):
        posts = load(url, http_request("POST", "/v1/rankings", key, body), clients, args.posts)
    with spy.sampling("get_queued"):
        live = load(url, http_request("GET", f"/v1/rankings/{queued}", key), clients, args.gets)
    return {"clients": clients, "get_finished": gets, "post": posts, "get_queued": live}


def _rows(run: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    gets, posts, live, n = run["get_finished"], run["post"], run["get_queued"], run["clients"]
    target = TARGETS["get_p99_ms"]
    return [
        (f"GET ranking p50 (finished), {n} cl.", f"{gets['p50_ms']:.1f} ms", "", None),
        (f"GET ranking p99 (finished), {n} cl.", f"{gets['p99_ms']:.1f} ms", "≤ 25 ms", gets["p99_ms"] <= target),
        (f"GET throughput (finished), {n} cl.", f"{gets['rps']:.0f} req/s", "", None),
        (f"GET ranking p50 (queued), {n} cl.", f"{live['p50_ms']:.1f} ms", "", None),
        (f"GET ranking p99 (queued), {n} cl.", f"{live['p99_ms']:.1f} ms", "≤ 25 ms", live["p99_ms"] <= target),
        (f"GET throughput (queued), {n} cl.", f"{live['rps']:.0f} req/s", "", None),
        (f"POST /v1/rankings p50, {n} cl.", f"{posts['p50_ms']:.1f} ms", "", None),
        (
            f"POST /v1/rankings p99, {n} cl.",
            f"{posts['p99_ms']:.1f} ms",
            "≤ 100 ms",
            posts["p99_ms"] <= TARGETS["post_p99_ms"],
        ),
        (f"POST throughput, {n} cl.", f"{posts['rps']:.0f} req/s", "", None),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["auto", "embedded", "postgres"], default="auto")
    parser.add_argument("--clients", default="16,64", help="concurrent clients, comma-separated (%(default)s)")
    parser.add_argument("--gets", type=int, default=40, help="GET requests per client")
    parser.add_argument("--posts", type=int, default=8, help="POST requests per client")
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument(
        "--py-spy",
        dest="py_spy",
        help="folder: sample the server with py-spy during each step at the last client count and the upload",
    )
    parser.add_argument("--json", help="write the numbers here (default: bench/results/api/<UTC time>.json)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",") if c]

    from bnrank.cli.client import Client
    from service.core.launcher import ServeProcess
    from tests.service.conftest import TINY_BUDGET

    work = Path(tempfile.mkdtemp(prefix="bnrank-bench-"))
    (work / "data").mkdir()
    settings, cleanup = make_settings(args.backend, work / "home", work / "data")
    backend = "postgres+redis" if settings.database_url.startswith("postgresql") else "sqlite+filesystem"
    serve = ServeProcess(settings, log_path=work / "serve.log", extra_args=["--no-worker"])
    runs = []
    try:
        serve.wait_ready()
        url, key, job_id, (dataset_id, *ids) = prepare(settings, work)
        # Warm up connection pools and code paths before measuring.
        load(url, http_request("GET", f"/v1/rankings/{job_id}", key), 8, 10)
        body = {"dataset_id": dataset_id, "checkpoint_ids": ids, "budget": TINY_BUDGET}
        # An unfinished ranking cannot be cached: the polling case.
        with Client(url, key) as client:
            queued = client.rank(dataset_id, ids, budget=TINY_BUDGET)["id"]
        pid = serve.process.pid
        spy = Spy(Path(args.py_spy) if args.py_spy else None, pid)
        for i, clients in enumerate(counts):
            last = i == len(counts) - 1
            runs.append(measure(url, key, job_id, body, queued, clients, args, spy if last else Spy(None, pid)))
        path = write_upload_file(args.upload_mib, work)
        with spy.sampling("upload"):
            up = upload(url, key, path, pid, raw=True)
        form = upload(url, key, path, pid, raw=False)
        path.unlink()
    except BaseException:
        print(f"failed; the service log says:\n{serve.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        serve.stop()
        cleanup()
        shutil.rmtree(work, ignore_errors=True)

    sha = sha256_rate()
    upload_target = TARGETS["upload_share_of_sha256"] * sha
    rows = [row for run in runs for row in _rows(run)]
    rows += [
        (
            f"upload {up['bytes'] / 2**30:.2f} GiB raw (HTTP {up['status']})",
            f"{up['mb_s']:.0f} MB/s",
            f"≥ {upload_target:.0f} MB/s",
            up["mb_s"] >= upload_target,
        ),
        (f"upload {form['bytes'] / 2**30:.2f} GiB form (HTTP {form['status']})", f"{form['mb_s']:.0f} MB/s", "", None),
        ("one-core sha256 (hashlib)", f"{sha:.0f} MB/s", "", None),
        (
            "API peak RSS growth (raw; form)",
            f"{up['rss_growth_mb']:.1f}; {form['rss_growth_mb']:.1f} MB",
            "≤ 64 MB",
            max(up["rss_growth_mb"], form["rss_growth_mb"]) <= TARGETS["upload_rss_mb"],
        ),
    ]
    requests = sum(r["get_finished"]["requests"] + r["get_queued"]["requests"] for r in runs)
    errors = sum(r["get_finished"]["errors"] + r["get_queued"]["errors"] + r["post"]["errors"] for r in runs)
    posts = sum(r["post"]["requests"] for r in runs)
    print(
        f"backend {backend}; clients {args.clients}; {requests} GETs, {posts} POSTs ({errors} errors); "
        f"{os.cpu_count()} CPUs (client and server share them)"
    )
    print(f"| {'measure':<38} | {'value':>12} | {'target':>12} | met |")
    print(f"|{'-' * 40}|{'-' * 14}|{'-' * 14}|-----|")
    for name, value, target, ok in rows:
        met = "" if ok is None else ("yes" if ok else "NO")
        print(f"| {name:<38} | {value:>12} | {target:>12} | {met:^3} |")
    profiles = spy.profiles()
    for step, profile in profiles.items():
        where = "the upload" if step == "upload" else f"{step} at {counts[-1]} clients"
        print(f"\npy-spy, {where}: share of busy samples (self; then inclusive)")
        for frame, share in profile["self"]:
            print(f"  {100 * share:5.1f} %  {frame}")
        for frame, share in profile["inclusive"][:15]:
            print(f"  {100 * share:5.1f} %  (incl.) {frame}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out = Path(args.json) if args.json else RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    numbers = {
        "when": stamp,
        "backend": backend,
        "cpus": os.cpu_count(),
        "targets": TARGETS,
        "runs": runs,
        "upload": up,
        "upload_form": form,
        "sha256_mb_s": sha,
        "profiles": profiles,
    }
    out.write_text(json.dumps(numbers, indent=2))
    print(f"\nnumbers written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0 if errors == 0 and up["status"] == form["status"] == 422 else 1


if __name__ == "__main__":
    sys.exit(main())
