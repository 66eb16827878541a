"""Hardening II targets: the hostile review's reproductions at full size against a real `bnrank serve`.

Against `bnrank serve --no-worker` (its own process, so /proc shows the API alone) with PostgreSQL + Redis
when they answer on localhost (else the embedded SQLite + filesystem broker; ``--backend`` forces one),
with the default rate limits ON (30 failed authentications and 120 submissions a minute):

1. 1 GiB bodies without a key, labelled ``multipart/form-data`` (and JSON), to ``/v1/rankings`` and
   ``/v1/datasets``, one at a time and three at once: status, seconds, API peak RSS growth (target
   ≤ 100 MB each);
2. the same 1 GiB multipart body to ``/v1/rankings`` with a valid key (413 at the JSON limit);
3. a valid upload form whose file part is followed by 17,000 distinct 60 KB text fields;
4. registering a folder whose .nii.gz (about 2 MB on disk) declares 1024³ uint16 (2 GiB, the default
   per-volume budget), then two such folders at once (target ≤ 300 MB growth for any registration);
5. 100 failing uploads (the hostile corpus of tests/fixtures/hostile, NUL names, NaN and 1e308 in
   network_def, uploads over the size limit, clients that disconnect mid-upload): blobs no row refers to
   afterwards, and partial uploads left in tmp/ (target 0);
6. 120 random keys from one address with a rotating ``X-Forwarded-For`` (no trusted proxy): 401s and 429s;
   100 requests without a key, then a valid key never seen before from the same address;
7. schemathesis for ``--schemathesis-s`` seconds (default 240) with every check, the limits on: server
   errors (target 0), from schemathesis's findings and from the API's log.

Peak RSS growth: VmHWM after resetting it through /proc/<pid>/clear_refs, and VmRSS sampled every 5 ms,
minus VmRSS before (tests/service/hostile.py). Prints a table and writes the raw numbers as JSON
(``--json``, default bench/results/hardening/<UTC time>.json).

    .venv/bin/python bench/hardening.py            # about seven minutes on 2 cores
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.service.hostile import (  # noqa: E402  (the repository root first: run as a script)
    MiB,
    PeakRss,
    flood,
    multipart_head,
    new_boundary,
    text_fields,
    volume_bomb,
    zeros,
)

GiB = 1024 * MiB
TARGETS = {"unauthenticated_mb": 100, "registration_mb": 300, "orphans": 0, "server_errors": 0}
CORPUS = ROOT / "tests" / "fixtures" / "hostile"


def make_settings(backend: str, home: Path, data: Path) -> tuple[Any, Any]:
    """A throwaway deployment's settings, as bench/api.py makes them but with the default rate limits on
    (what the review attacked), and its cleanup."""
    from api import make_settings as deployment

    from service.core.config import Settings

    names = ("submissions_per_minute", "auth_failures_per_minute")
    limits = {name: Settings.model_fields[name].default for name in names}
    return deployment(backend, home, data, log_level="INFO", **limits)


def new_key(settings: Any, owner: str) -> str:
    from service.api.auth import create_key
    from service.core.db import Database

    db = Database(settings, pool_size=1)
    try:
        with db.session() as session:
            return create_key(session, owner)[1]
    finally:
        db.dispose()


def measured(pid: int, fn: Any, *args: Any) -> dict[str, Any]:
    start = time.perf_counter()
    with PeakRss(pid) as peak:
        result = fn(*args)
    return {"result": result, "seconds": time.perf_counter() - start, "rss_growth_mb": peak.growth / 1e6}


def at_once(n: int, fn: Any, *args: Any) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(fn, *args) for _ in range(n)]]


def failing_uploads(url: str, key: str, settings: Any, work: Path) -> Counter[int]:
    """100 uploads that must all fail, of every kind the service refuses; their statuses."""
    import httpx

    manifest = json.loads((CORPUS / "manifest.json").read_text())
    valid = CORPUS / "files" / "valid.safetensors"
    statuses: Counter[int] = Counter()
    attempts: list[tuple[Path, dict[str, str]]] = []
    for filename, _, fields in manifest["files"].values():
        attempts.append((CORPUS / "files" / filename, dict(fields)))
    for text, _ in manifest["network_defs"].values():
        attempts.append((valid, {"network_def": text}))
    attempts += [(valid, {"name": f"nul\x00{i}"}) for i in range(10)]
    attempts += [(valid, {"network_def": '{"_target_": "UNet", "dropout": NaN}'}) for _ in range(10)]
    bad_forms: list[dict[str, str]] = [
        {"name": "x" * 301},
        {"modality": "PET"},
        {"architecture": "no-such-net"},
        {"architecture": "unet3d", "network_def": '{"_target_": "UNet"}'},
        {"network_def": "{not json"},
        {"network_def": "[1, 2]"},
        {"surprise": "field"},
    ]
    while len(attempts) < 90:
        attempts.append((valid, bad_forms[len(attempts) % len(bad_forms)]))
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as client:
        for path, fields in attempts[:90]:
            with path.open("rb") as f:
                response = client.post("/v1/checkpoints", files={"file": (path.name, f)}, data={"name": "f", **fields})
            statuses[response.status_code] += 1
    for _ in range(10):  # clients that give up half way through a raw upload
        with socket.create_connection((settings.api_host, settings.api_port)) as conn:
            head = (
                f"POST /v1/checkpoints?name=cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {64 * MiB}\r\n\r\n"
            )
            conn.sendall(head.encode() + valid.read_bytes())
        statuses[0] += 1  # no answer: the client left
    return statuses


def orphans_after(settings: Any) -> tuple[int, int]:
    """(blobs no row refers to, partial uploads in tmp/), once the API had time to abort the cut uploads."""
    from service.core.blobs import BlobStore
    from service.core.db import Database
    from service.core.orphans import find_orphans

    store = BlobStore(settings.blobs)
    deadline = time.monotonic() + 60
    while list(store.tmp_dir.glob("*.partial")) and time.monotonic() < deadline:
        time.sleep(0.5)
    db = Database(settings, pool_size=1)
    try:
        with db.session() as session:
            orphans, _ = find_orphans(session, store)
    finally:
        db.dispose()
    return len(orphans), len(list(store.tmp_dir.glob("*.partial")))


def guessing(url: str, key: str) -> dict[str, Any]:
    import httpx

    rotating = Counter(
        httpx.get(
            f"{url}/v1/jobs",
            headers={"Authorization": f"Bearer bnr_{os.urandom(8).hex()}", "X-Forwarded-For": f"203.0.113.{i % 250}"},
        ).status_code
        for i in range(120)
    )
    time.sleep(61)  # the failed-key budget of this address refills before the keyless flood (its own budget)
    keyless = Counter(httpx.get(f"{url}/v1/jobs").status_code for _ in range(100))
    valid = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code
    return {"rotating_xff": dict(rotating), "keyless": dict(keyless), "valid_key_after_keyless": valid}


def schemathesis(url: str, key: str, seconds: int, work: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(ROOT / "tests/service/schemathesis.toml"),
        "--no-color", "run", f"{url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing",
        "--max-time", str(seconds), "--workers", "1", "--seed", "22", "--header", f"Authorization: Bearer {key}",
        "--exclude-path", "/v1/jobs/{job_id}/events",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, check=False, env={**os.environ})
    output = done.stdout + done.stderr
    cases = re.findall(r"(\d+) generated", output)
    return {
        "exit_code": done.returncode,
        "seconds": time.perf_counter() - start,
        "server_error_findings": len(re.findall(r"Server error", output)),
        "generated": int(cases[-1]) if cases else None,
        "summary": output[-3000:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["auto", "embedded", "postgres"], default="auto")
    parser.add_argument("--body-mib", type=int, default=1024, help="size of the unauthenticated bodies")
    parser.add_argument("--schemathesis-s", type=int, default=240)
    parser.add_argument("--json", help="default: bench/results/hardening/<UTC time>.json")
    args = parser.parse_args()

    from service.core.db import migrate
    from service.core.launcher import ServeProcess
    from tests.engine.volumes import write_nnunet_dataset

    work = Path(tempfile.mkdtemp(prefix="bnrank-hardening-"))
    data = work / "data"
    data.mkdir()
    settings, cleanup = make_settings(args.backend, work / "home", data)
    backend = "postgres+redis" if settings.database_url.startswith("postgresql") else "sqlite+filesystem"
    settings.ensure_folders()
    migrate(settings)
    key = new_key(settings, "bench")
    serve = ServeProcess(settings, log_path=work / "serve.log", extra_args=["--no-worker"])
    host, port, url = settings.api_host, settings.api_port, f"http://{settings.api_host}:{settings.api_port}"
    body = args.body_mib * MiB
    raw: dict[str, Any] = {"backend": backend, "cpus": os.cpu_count(), "body_bytes": body}
    try:
        serve.wait_ready()
        pid = serve.process.pid
        multipart = {"Content-Type": "multipart/form-data; boundary=x"}

        def unauth(path: str, headers: dict[str, str]) -> int:
            return flood(host, port, path, headers=headers, length=body, body=zeros(body))[0]

        raw["unauth_rankings_multipart"] = measured(pid, unauth, "/v1/rankings", multipart)
        raw["unauth_datasets_multipart"] = measured(pid, unauth, "/v1/datasets", multipart)
        raw["unauth_rankings_json"] = measured(pid, unauth, "/v1/rankings", {"Content-Type": "application/json"})
        raw["unauth_three_at_once"] = measured(pid, at_once, 3, unauth, "/v1/rankings", multipart)
        authed = {**multipart, "Authorization": f"Bearer {key}"}
        raw["auth_multipart_to_json_route"] = measured(pid, unauth, "/v1/rankings", authed)

        boundary = new_boundary()
        head = multipart_head(boundary, (CORPUS / "files" / "valid.safetensors").read_bytes())
        length, fields = text_fields(boundary, 17_000, 60_000)
        form = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {key}"}

        def many_fields() -> int:
            return flood(host, port, "/v1/checkpoints", headers=form, length=len(head) + length,
                         body=__import__("itertools").chain([head], fields))[0]  # fmt: skip

        raw["fields_17000_x_60kb"] = measured(pid, many_fields)

        import httpx

        folders = []
        for i in range(3):
            folder = write_nnunet_dataset(data / f"Dataset90{i}_Bomb", n_cases=3, shape=(12, 12, 12), n_labels=1)
            volume_bomb(next((folder / "imagesTr").glob("*_0000.nii.gz")), (1024, 1024, 1024))
            folders.append(folder)
        raw["bomb_file_bytes"] = next((folders[0] / "imagesTr").glob("*_0000.nii.gz")).stat().st_size

        def register(folder: Path) -> int:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=900) as client:
                return client.post("/v1/datasets", json={"name": folder.name, "uri": folder.name}).status_code

        raw["register_2gib_volume"] = measured(pid, register, folders[0])

        def two_at_once() -> list[int]:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                return list(pool.map(register, folders[1:]))

        raw["register_two_at_once"] = measured(pid, two_at_once)

        statuses = failing_uploads(url, key, settings, work)
        raw["failing_uploads"] = {"statuses": {str(k): v for k, v in statuses.items()}, "count": sum(statuses.values())}
        raw["orphans"], raw["partials"] = orphans_after(settings)
        raw["guessing"] = guessing(url, new_key(settings, "fresh"))
        raw["schemathesis"] = schemathesis(url, new_key(settings, "schemathesis"), args.schemathesis_s, work)
        log = (work / "serve.log").read_text(errors="replace")
        raw["api_log_unhandled_errors"] = log.count("unhandled error")
    except BaseException:
        print(f"failed; the service log says:\n{serve.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        serve.stop()
        cleanup()
        shutil.rmtree(work, ignore_errors=True)

    def row(name: str, entry: dict[str, Any], target: float) -> tuple[str, str, str, bool]:
        result = entry["result"]
        shown = ",".join(str(r) for r in result) if isinstance(result, list) else str(result)
        value = f"HTTP {shown}; {entry['rss_growth_mb']:.0f} MB, {entry['seconds']:.1f} s"
        return name, value, f"≤ {target} MB", entry["rss_growth_mb"] <= target

    u, r = TARGETS["unauthenticated_mb"], TARGETS["registration_mb"]
    rows = [
        row(f"no key, {args.body_mib} MiB multipart → rankings", raw["unauth_rankings_multipart"], u),
        row(f"no key, {args.body_mib} MiB multipart → datasets", raw["unauth_datasets_multipart"], u),
        row(f"no key, {args.body_mib} MiB JSON → rankings", raw["unauth_rankings_json"], u),
        row("no key, three of them at once", raw["unauth_three_at_once"], u),
        row(f"valid key, {args.body_mib} MiB multipart → rankings", raw["auth_multipart_to_json_route"], u),
        row("valid key, file + 17,000 × 60 KB fields", raw["fields_17000_x_60kb"], u),
        row(f"register 1024³ uint16 ({raw['bomb_file_bytes'] / 1e6:.1f} MB .nii.gz)", raw["register_2gib_volume"], r),
        row("register two such folders at once", raw["register_two_at_once"], r),
    ]
    failing = raw["failing_uploads"]
    rows.append((
        f"{failing['count']} failing uploads: orphaned blobs, partials",
        f"{raw['orphans']}, {raw['partials']}  ({failing['statuses']})",
        "0",
        raw["orphans"] == 0 and raw["partials"] == 0,
    ))  # fmt: skip
    guess = raw["guessing"]
    rows.append(
        ("120 keys, rotating X-Forwarded-For", str(guess["rotating_xff"]), "429s", "429" in str(guess["rotating_xff"]))
    )
    rows.append((
        "100 keyless, then a valid key", f"{guess['keyless']}; valid key {guess['valid_key_after_keyless']}",
        "valid 200", guess["valid_key_after_keyless"] == 200,
    ))  # fmt: skip
    st = raw["schemathesis"]
    errors = st["server_error_findings"] + raw["api_log_unhandled_errors"]
    rows.append((
        f"schemathesis {st['seconds']:.0f} s, limits on",
        f"{errors} server errors ({st['generated']} cases, exit {st['exit_code']})",
        "0", errors == 0,
    ))  # fmt: skip
    print(f"backend {backend}; {os.cpu_count()} CPUs (client and server share them)")
    print(f"| {'measure':<48} | {'value':<44} | {'target':<8} | met |")
    print(f"|{'-' * 50}|{'-' * 46}|{'-' * 10}|-----|")
    for name, value, target, ok in rows:
        print(f"| {name:<48} | {value:<44} | {target:<8} | {'yes' if ok else 'NO':^3} |")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.json) if args.json else ROOT / "bench" / "results" / "hardening" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"targets": TARGETS, "rows": rows, "raw": raw}, indent=1, default=str) + "\n")
    print(f"raw numbers: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
