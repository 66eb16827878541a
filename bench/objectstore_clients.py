"""Which S3 client for the object-store backend: boto3 against obstore, on the same local S3 server, side by side.

Both clients talk to one moto server (tests/s3server.py) on 127.0.0.1, in one run, alternating, so the
server's own speed is the same for both. Measured per client (median of ``--repeats``):

- ``put``: one PUT of ``--mib`` MiB from memory (the single-stream rate the upload bench compares with);
- ``multipart``: the same bytes as a multipart upload in 16 MiB parts sent one after another (what the
  API does while it receives an upload);
- ``get``: reading the object back in 1 MiB chunks (what a worker does to fill its blob cache);
- ``small``: round trips of a HEAD on a missing key (the existence check before a copy), per second.

    .venv/bin/python bench/objectstore_clients.py --mib 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "objectstore_clients"
PART = 16 * 1024 * 1024


def boto3_ops(server: Any, bucket: str) -> dict[str, Any]:
    client = server.client()

    def put(data: bytes) -> None:
        client.put_object(Bucket=bucket, Key="put", Body=data)

    def multipart(data: bytes) -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
        parts = []
        for number, start in enumerate(range(0, len(data), PART), 1):
            answer = client.upload_part(
                Bucket=bucket, Key="mp", UploadId=upload, PartNumber=number, Body=data[start : start + PART]
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts})

    def get() -> int:
        return sum(len(c) for c in client.get_object(Bucket=bucket, Key="put")["Body"].iter_chunks(1024 * 1024))

    def small() -> None:
        with contextlib.suppress(client.exceptions.ClientError):
            client.head_object(Bucket=bucket, Key="missing")

    return {"put": put, "multipart": multipart, "get": get, "small": small}


def obstore_ops(server: Any, bucket: str) -> dict[str, Any]:
    import obstore
    from obstore.store import S3Store

    from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY

    store = S3Store(
        bucket,
        endpoint=server.endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    def put(data: bytes) -> None:
        obstore.put(store, "put", data, use_multipart=False)

    def multipart(data: bytes) -> None:
        # obstore's streaming writer: parts of `chunk_size` sent as they fill, one in flight (like the API)
        obstore.put(
            store, "mp", (data[i : i + PART] for i in range(0, len(data), PART)), chunk_size=PART, max_concurrency=1
        )

    def get() -> int:
        return sum(len(c) for c in obstore.get(store, "put").stream(min_chunk_size=1024 * 1024))

    def small() -> None:
        with contextlib.suppress(FileNotFoundError):
            obstore.head(store, "missing")

    return {"put": put, "multipart": multipart, "get": get, "small": small}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="object size (MiB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=300, help="HEAD requests per measurement")
    parser.add_argument("--json", type=Path, help="raw results (default bench/results/objectstore_clients/<time>.json)")
    args = parser.parse_args()

    from tests.s3server import moto_server

    data = os.urandom(args.mib * 1024 * 1024)
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as work, moto_server(Path(work) / "moto.log") as server:
        clients = {"boto3": boto3_ops(server, server.new_bucket()), "obstore": obstore_ops(server, server.new_bucket())}
        for _ in range(args.repeats):
            for name, ops in clients.items():  # alternating: the server's state is the same for both
                row = rows.setdefault(name, {"put": [], "multipart": [], "get": [], "small": []})
                for op in ("put", "multipart"):
                    started = time.perf_counter()
                    ops[op](data)
                    row[op].append(len(data) / (time.perf_counter() - started) / 1e6)
                started = time.perf_counter()
                assert ops["get"]() == len(data)
                row["get"].append(len(data) / (time.perf_counter() - started) / 1e6)
                started = time.perf_counter()
                for _ in range(args.small):
                    ops["small"]()
                row["small"].append(args.small / (time.perf_counter() - started))

    medians = {name: {op: statistics.median(v) for op, v in row.items()} for name, row in rows.items()}
    print(f"S3 clients against one moto server on 127.0.0.1, {args.mib} MiB objects, median of {args.repeats}")
    print(f"{'client':<8} {'put MB/s':>9} {'multipart MB/s':>15} {'get MB/s':>9} {'HEAD/s':>7}")
    for name, m in medians.items():
        print(f"{name:<8} {m['put']:>9.0f} {m['multipart']:>15.0f} {m['get']:>9.0f} {m['small']:>7.0f}")
    b, o = medians["boto3"], medians["obstore"]
    print("obstore / boto3: " + ", ".join(f"{op} {o[op] / b[op]:.2f}x" for op in ("put", "multipart", "get", "small")))
    out = args.json or RESULTS / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mib": args.mib, "repeats": args.repeats, "raw": rows, "median": medians}, indent=1))
    print(f"raw: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
