"""API speed: reading and queueing rankings under 16 and 64 concurrent clients on 1 and 2 API processes, and a
2 GiB upload on the filesystem and the S3 blob backends.

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
   Beside the latencies of steps 2-4, the API's CPU time per request: user + system time of the server
   process and its children (`server_cpu_s`, from /proc) over the step, divided by its requests.
   Steps 1-4 run once per API process count (``--processes``, default 1 and 2: `bnrank serve --processes
   N`, one deployment each, measured one after the other in the same run);
5. a 2 GiB upload (``--upload-mib``) whose bytes are not a checkpoint: it is streamed to the blob store
   and hashed in full, then refused by the format check (422) without loading anything, so the figure is
   the transport + hashing + disk path alone. Once per blob backend (``--blobs``): the folder, and an S3
   object store (moto's server on 127.0.0.1, tests/s3server.py), where the upload also goes up as a
   multipart upload (each upload starts once the API is idle: `wait_idle`); beside the S3 figure, the
   same server's own single-stream rate (one boto3 PUT of the same file). The filesystem upload runs once
   per ``--receive-buffers`` size (uvicorn's own 64 KiB and the default 1 MiB of
   ``BNRANK_RECEIVE_BUFFER_BYTES``), side by side. Sent twice: as the raw body
   (``application/octet-stream``, the fast path; the target applies to it) and as a multipart form (beside
   it, for comparison). Peak RSS
   growth of the API process is read from /proc/<pid>/status (VmHWM after resetting it through
   /proc/<pid>/clear_refs); the target is ±50 MB on either backend. Beside it, the machine's one-core
   sha256 rate (hashlib over 256 MiB in this process): the filesystem upload target is 0.8 × that.

The rate limits are off for the run (``BNRANK_SUBMISSIONS_PER_MINUTE=0``): this measures the service, not
its abuse controls. The numbers are also written as JSON (``--json``, default
bench/results/api/<UTC time>.json).

The load generator is a minimal asyncio HTTP/1.1 client (pre-encoded requests, keep-alive) and the upload
uses sendfile, so the client takes as little of the 2 cores as possible from the server.

    .venv/bin/python bench/api.py                      # about six minutes on 2 cores
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

TARGETS = {
    "get_p99_ms": 25.0,
    "get_p99_ms_64": 100.0,
    "post_p99_ms": 100.0,
    "upload_share_of_sha256": 0.8,
    "upload_rss_mb": 50.0,
}
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


def load(url: str, request: bytes, clients: int, per_client: int, pid: int | None = None) -> dict[str, float]:
    """Latencies of ``clients`` keep-alive clients sending ``request`` ``per_client`` times each; with ``pid``
    (the server), also the server's CPU time per request over the run."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[int] = []

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(
            *(_client(host, int(port), request, per_client, latencies, errors) for _ in range(clients))
        )
        return time.perf_counter() - started

    cpu_before = server_cpu_s(pid) if pid else 0.0
    wall = asyncio.run(run())
    cpu = server_cpu_s(pid) - cpu_before if pid else float("nan")
    ordered = sorted(latencies)
    return {
        "server_cpu_ms_per_request": 1000 * cpu / max(len(ordered), 1),
        "requests": len(ordered),
        "errors": len(errors),
        "rps": len(ordered) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": 1000 * ordered[-1],
    }


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) spent so far by ``pid`` and every process below it (the API processes of
    `bnrank serve --processes N` are its children); the worker is stopped before the timed steps."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while we looked
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier and c not in tree]
        tree.update(frontier)
    return sum(times.get(p, 0.0) for p in tree)


def wait_idle(pid: int, *, busy_share: float = 0.05, timeout_s: float = 60.0) -> float:
    """Wait until the server (and its children) use under ``busy_share`` of a core over half a second: at
    start-up the API imports torch again in its inspection forkserver, in the background, for seconds, which
    the first upload measured otherwise shared the cores with. Returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        before = server_cpu_s(pid)
        time.sleep(0.5)
        if server_cpu_s(pid) - before < busy_share * 0.5:
            break
    return time.perf_counter() - started


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


def make_settings(backend: str, home: Path, data: Path, **extra: Any) -> tuple[Any, Any]:
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
        **extra,
    }
    if backend == "auto":
        from tests.service.conftest import _postgres_and_redis

        backend = "postgres" if _postgres_and_redis() else "embedded"
    if backend == "embedded":
        return Settings(**common, database_url="", broker_url=""), lambda: None
    import psycopg
    import redis

    name = f"bnrank_bench_{os.getpid()}_{os.urandom(3).hex()}"
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

    gil = False  # ``--py-spy-gil``: sample only the thread holding the GIL (where the CPU goes, not the waits)

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
                *(["--gil"] if self.gil else []),
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
        gets = load(url, http_request("GET", f"/v1/rankings/{job_id}", key), clients, args.gets, spy.pid)
    with spy.sampling("post"):
        posts = load(url, http_request("POST", "/v1/rankings", key, body), clients, args.posts, spy.pid)
    with spy.sampling("get_queued"):
        live = load(url, http_request("GET", f"/v1/rankings/{queued}", key), clients, args.gets, spy.pid)
    return {"clients": clients, "get_finished": gets, "post": posts, "get_queued": live}


def _rows(run: dict[str, Any], processes: int = 1) -> list[tuple[str, str, str, bool | None]]:
    gets, posts, live, n = run["get_finished"], run["post"], run["get_queued"], run["clients"]
    target = TARGETS["get_p99_ms"] if n <= 16 else TARGETS["get_p99_ms_64"]
    post_target = TARGETS["post_p99_ms"]
    p = f"{n} cl., {processes} proc."
    goal = f"≤ {target:.0f} ms"
    return [
        (f"GET ranking p50 (finished), {p}", f"{gets['p50_ms']:.1f} ms", "", None),
        (f"GET ranking p99 (finished), {p}", f"{gets['p99_ms']:.1f} ms", goal, gets["p99_ms"] <= target),
        (f"GET throughput (finished), {p}", f"{gets['rps']:.0f} req/s", "", None),
        (f"GET ranking p50 (queued), {p}", f"{live['p50_ms']:.1f} ms", "", None),
        (f"GET ranking p99 (queued), {p}", f"{live['p99_ms']:.1f} ms", goal, live["p99_ms"] <= target),
        (f"GET throughput (queued), {p}", f"{live['rps']:.0f} req/s", "", None),
        (f"POST /v1/rankings p50, {p}", f"{posts['p50_ms']:.1f} ms", "", None),
        (
            f"POST /v1/rankings p99, {p}",
            f"{posts['p99_ms']:.1f} ms",
            f"≤ {post_target:.0f} ms" if n <= 16 else "",
            posts["p99_ms"] <= post_target if n <= 16 else None,
        ),
        (f"POST throughput, {p}", f"{posts['rps']:.0f} req/s", "", None),
        (
            f"API CPU per GET (fin.; queued); POST, {p}",
            f"{gets['server_cpu_ms_per_request']:.2f}; {live['server_cpu_ms_per_request']:.2f}; "
            f"{posts['server_cpu_ms_per_request']:.1f} ms",
            "",
            None,
        ),
    ]


def deployment(args: Any, work: Path, backend: str, **extra: Any) -> tuple[Any, Any, Any]:
    """A `bnrank serve --no-worker` of its own (settings, ServeProcess, cleanup), ready."""
    from service.core.launcher import ServeProcess

    folder = Path(tempfile.mkdtemp(prefix="deployment-", dir=work))
    (folder / "data").mkdir()
    settings, cleanup = make_settings(backend, folder / "home", folder / "data", **extra)
    serve = ServeProcess(settings, log_path=folder / "serve.log", extra_args=["--no-worker"])
    try:
        serve.wait_ready()
    except BaseException:
        print(f"failed; the service log says:\n{serve.log_tail(40)}", file=sys.stderr)
        serve.stop()
        cleanup()
        raise
    return settings, serve, cleanup


def latency_runs(args: Any, work: Path, processes: int, counts: list[int], spy_folder: Path | None) -> dict[str, Any]:
    """Steps 1-4 against one deployment with ``processes`` API processes."""
    from bnrank.cli.client import Client
    from tests.service.conftest import TINY_BUDGET

    settings, serve, cleanup = deployment(args, work, args.backend, api_processes=processes)
    try:
        url, key, job_id, (dataset_id, *ids) = prepare(settings, work)
        # Warm up connection pools and code paths (every process) before measuring.
        load(url, http_request("GET", f"/v1/rankings/{job_id}", key), 8, 10 * processes)
        body = {"dataset_id": dataset_id, "checkpoint_ids": ids, "budget": TINY_BUDGET}
        # An unfinished ranking cannot be cached: the polling case.
        with Client(url, key) as client:
            queued = client.rank(dataset_id, ids, budget=TINY_BUDGET)["id"]
        pid = serve.process.pid
        runs = []
        for i, clients in enumerate(counts):
            spy = Spy(spy_folder if i == len(counts) - 1 and processes == 1 else None, pid)
            runs.append(measure(url, key, job_id, body, queued, clients, args, spy))
        backend = "postgres+redis" if settings.database_url.startswith("postgresql") else "sqlite+filesystem"
        return {"processes": processes, "backend": backend, "runs": runs}
    finally:
        serve.stop()
        cleanup()


def upload_runs(
    args: Any, work: Path, blobs: str, path: Path, spy_folder: Path | None, receive_buffer: int | None = None
) -> dict[str, Any]:
    """Step 5 on one blob backend: raw and form uploads, the API's RSS; on S3 the server's own PUT rate."""
    from service.api.auth import create_key
    from service.core.db import Database, migrate
    from tests.s3server import moto_server

    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {"receive_buffer_bytes": receive_buffer} if receive_buffer else {}
        server = None
        if blobs == "s3":
            server = stack.enter_context(moto_server(work / "moto.log"))
            extra.update(server.settings(server.new_bucket(), prefix="bench"))
        settings, serve, cleanup = deployment(args, work, args.backend, **extra)
        stack.callback(cleanup)
        stack.callback(serve.stop)
        migrate(settings)
        db = Database(settings)
        with db.session() as session:
            _, key = create_key(session, "bench")
        db.dispose()
        url, pid = serve.url, serve.process.pid
        spy = Spy(spy_folder if blobs == "filesystem" else None, pid)
        wait_idle(pid)
        with spy.sampling("upload"):
            raw = upload(url, key, path, pid, raw=True)
        form = upload(url, key, path, pid, raw=False)
        result: dict[str, Any] = {
            "blobs": blobs,
            "receive_buffer_bytes": settings.receive_buffer_bytes,
            "raw": raw,
            "form": form,
        }
        if server is not None:
            # The same server's own single-stream rate: one PUT of the same file, from disk, by boto3.
            client, bucket = server.client(), extra["blob_url"].split("/")[2]
            with path.open("rb") as f:
                started = time.perf_counter()
                client.put_object(Bucket=bucket, Key="bench-single-put", Body=f)
                seconds = time.perf_counter() - started
            result["server_put_mb_s"] = path.stat().st_size / seconds / 1e6
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["auto", "embedded", "postgres"], default="auto")
    parser.add_argument("--clients", default="16,64", help="concurrent clients, comma-separated (%(default)s)")
    parser.add_argument("--processes", default="1,2", help="API process counts, one deployment each (%(default)s)")
    parser.add_argument("--blobs", default="filesystem,s3", help="blob backends of the upload step (%(default)s)")
    parser.add_argument(
        "--receive-buffers",
        default="65536,1048576",
        help="BNRANK_RECEIVE_BUFFER_BYTES of the filesystem uploads, one deployment each (%(default)s)",
    )
    parser.add_argument("--gets", type=int, default=40, help="GET requests per client")
    parser.add_argument("--posts", type=int, default=8, help="POST requests per client")
    parser.add_argument("--upload-mib", type=int, default=2048)
    parser.add_argument(
        "--py-spy",
        dest="py_spy",
        help="folder: sample the server with py-spy during each step at the last client count and the upload",
    )
    parser.add_argument(
        "--py-spy-gil",
        dest="py_spy_gil",
        action="store_true",
        help="with --py-spy: sample only the thread holding the GIL (CPU time, not waits)",
    )
    parser.add_argument("--json", help="write the numbers here (default: bench/results/api/<UTC time>.json)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",") if c]
    process_counts = [int(p) for p in args.processes.split(",") if p]
    spy_folder = Path(args.py_spy) if args.py_spy else None
    Spy.gil = args.py_spy_gil

    work = Path(tempfile.mkdtemp(prefix="bnrank-bench-"))
    try:
        latency = [latency_runs(args, work, p, counts, spy_folder) for p in process_counts]
        path = write_upload_file(args.upload_mib, work)
        uploads = [
            upload_runs(args, work, "filesystem", path, spy_folder, int(size))
            for size in args.receive_buffers.split(",")
            if size
        ]
        uploads += [upload_runs(args, work, b, path, None) for b in args.blobs.split(",") if b and b != "filesystem"]
        path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sha = sha256_rate()
    upload_target = TARGETS["upload_share_of_sha256"] * sha
    rows = []
    for group in latency:
        for run in group["runs"]:
            rows += _rows(run, group["processes"])
    for up in uploads:
        raw, form, b = up["raw"], up["form"], up["blobs"]
        if b == "filesystem":
            b = f"fs, {up['receive_buffer_bytes'] // 1024} KiB buffer"
            rows.append(
                (
                    f"upload {raw['bytes'] / 2**30:.2f} GiB raw, {b} (HTTP {raw['status']})",
                    f"{raw['mb_s']:.0f} MB/s",
                    f"≥ {upload_target:.0f} MB/s",
                    raw["mb_s"] >= upload_target,
                )
            )
        else:
            rows.append(
                (
                    f"upload {raw['bytes'] / 2**30:.2f} GiB raw, {b} (HTTP {raw['status']})",
                    f"{raw['mb_s']:.0f} MB/s",
                    f"{raw['mb_s'] / up['server_put_mb_s']:.2f}× put",
                    None,
                )
            )
            rows.append((f"the {b} server's own single PUT", f"{up['server_put_mb_s']:.0f} MB/s", "", None))
        rows.append((f"upload form, {b} (HTTP {form['status']})", f"{form['mb_s']:.0f} MB/s", "", None))
        rows.append(
            (
                f"API peak RSS growth, {b} (raw; form)",
                f"{raw['rss_growth_mb']:.1f}; {form['rss_growth_mb']:.1f} MB",
                f"≤ {TARGETS['upload_rss_mb']:.0f} MB",
                max(raw["rss_growth_mb"], form["rss_growth_mb"]) <= TARGETS["upload_rss_mb"],
            )
        )
    rows.append(("one-core sha256 (hashlib)", f"{sha:.0f} MB/s", "", None))
    all_runs = [run for group in latency for run in group["runs"]]
    requests = sum(r["get_finished"]["requests"] + r["get_queued"]["requests"] for r in all_runs)
    errors = sum(r["get_finished"]["errors"] + r["get_queued"]["errors"] + r["post"]["errors"] for r in all_runs)
    posts = sum(r["post"]["requests"] for r in all_runs)
    backend = latency[0]["backend"] if latency else args.backend
    print(
        f"backend {backend}; clients {args.clients}; API processes {args.processes}; {requests} GETs, {posts} "
        f"POSTs ({errors} errors); {os.cpu_count()} CPUs (client and server share them)"
    )
    print(f"| {'measure':<44} | {'value':>14} | {'target':>12} | met |")
    print(f"|{'-' * 46}|{'-' * 16}|{'-' * 14}|-----|")
    for name, value, target, ok in rows:
        met = "" if ok is None else ("yes" if ok else "NO")
        print(f"| {name:<44} | {value:>14} | {target:>12} | {met:^3} |")
    profiles = Spy(spy_folder, 0).profiles()
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
        "latency": latency,
        "uploads": uploads,
        "sha256_mb_s": sha,
        "profiles": profiles,
    }
    out.write_text(json.dumps(numbers, indent=2))
    print(f"\nnumbers written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    ok_uploads = all(u["raw"]["status"] == u["form"]["status"] == 422 for u in uploads)
    return 0 if errors == 0 and ok_uploads else 1


if __name__ == "__main__":
    sys.exit(main())
