"""An S3-speaking server on 127.0.0.1 for the tests and the benchmark: moto's standalone server, a subprocess.

A real HTTP server in another process, so the code under test goes through botocore's whole request path
(signing, multipart, streaming bodies) exactly as against MinIO or AWS; nothing inside the process under
test is patched. Each user makes its own bucket, so parallel sessions share nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from service.core.launcher import free_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


class MotoServer:
    """``python -m moto.server`` on a free loopback port; `client` and `new_bucket` speak to it."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = log.open("ab")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto's server exited with status {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.endpoint}/moto-api/", timeout=2)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto's server did not answer within {timeout_s:.0f}s")
            time.sleep(0.1)

    def client(self) -> Any:
        from service.core.objectstore import make_client

        return make_client(self.endpoint, REGION, ACCESS_KEY, SECRET_KEY)

    def new_bucket(self, stem: str = "bnrank-test") -> str:
        name = f"{stem}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "blobs") -> dict[str, Any]:
        """The ``Settings`` fields that put the blob store in ``bucket`` and allow datasets from it."""
        return {
            "blob_url": f"s3://{bucket}/{prefix}",
            "s3_endpoint_url": self.endpoint,
            "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY,
            "dataset_buckets": [bucket],
        }

    def stop(self) -> None:
        from service.core.launcher import stop

        try:
            stop(self.process, grace_s=5)
        finally:
            self._log.close()


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[MotoServer]:
    server = MotoServer(log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
