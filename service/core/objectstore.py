"""Blobs in an S3-compatible object store (``BNRANK_BLOB_URL=s3://bucket/prefix``), for workers on other hosts.

The filesystem store (service/core/blobs.py) needs every worker to see the API's folder; with the object
store a worker needs only credentials. Keys keep the filesystem store's addresses (``sha256/<2 hex>/<hex>``
below the prefix), so a database row's ``blob_path`` means the same bytes on either backend.

- **Uploads** stream into a multipart upload under ``<prefix>/tmp/<token>`` while they are hashed, one part
  (``s3_part_bytes``) in memory at a time; the API also keeps the bytes in a local spool file, because the
  upload is inspected (loaded in a child process) before it is accepted. A file smaller than one part is
  sent with a single PUT straight to its address. On commit the multipart object is copied server-side to
  its content address and the temporary key deleted; on any failure the multipart upload is aborted, and
  `S3BlobStore.sweep` aborts the ones a killed process left (parts of an unfinished multipart upload are
  invisible to listings but billed and kept forever otherwise).
- **Reads** (`fetch`) download into a local cache under ``blob_dir`` keyed by sha256 and verify the hash
  before the file is used; a cached file is used again without a request.
- **Downloads** of artifacts are streamed through the API (`stream`), not redirected to a presigned URL: the
  store's endpoint is often an address only the service's hosts reach (a compose network, a VPC endpoint),
  and the API keeps the one place where ownership is checked.

The client is boto3 (botocore): chosen by measurement against obstore on the same local server
(bench/objectstore_clients.py, docs/benchmarks.md) and for its complete multipart API (listing and aborting
unfinished uploads, which the sweep needs).
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from service.core.blobs import CHUNK, BlobStore, BlobWriter, sweep_partials
from service.core.config import Settings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
COPY_PART_BYTES = 512 * MiB  # server-side copy in parts above this (a single CopyObject stops at 5 GiB)


class BlobCorrupt(Exception):
    """Bytes read from the store do not hash to their address."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")`` (the prefix empty or ending in ``/``)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def make_client(endpoint_url: str, region: str, access_key_id: str, secret_access_key: str) -> Any:
    """A boto3 S3 client; empty credentials fall back to boto3's own chain (environment, instance role)."""
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=32,
        retries={"max_attempts": 4, "mode": "standard"},
        # Path-style addressing works with every S3-compatible server (MinIO, moto, Ceph) without DNS names.
        s3={"addressing_style": "path"},
        # Checksums only where the operation needs them: the bytes are hashed with sha256 anyway, and several
        # S3-compatible servers refuse the extra checksum headers newer botocore adds to every part.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=5,
        read_timeout=60,
    )
    credentials = (
        {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key} if access_key_id else {}
    )
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config, **credentials)


class _PartBody(io.RawIOBase):
    """A part's bytes as the seekable file botocore reads (and re-reads on a retry) in small chunks.

    Handing botocore a fresh ``bytes`` of 16 MiB per part made the allocator keep one such block per
    thread-pool thread: the API's memory grew by about 95 MB over a 2 GiB upload (bench/api.py).
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


class S3BlobWriter(BlobWriter):
    """A `BlobWriter` that also sends the bytes, part by part, to a multipart upload.

    A part is gathered in one buffer allocated once per upload (``s3_part_bytes``): the upload's memory.
    """

    def __init__(self, store: S3BlobStore, limit: int | None) -> None:
        super().__init__(store, limit)
        self.s3 = store
        # The start time is part of the key: the sweep reads it there, because some servers (moto) report no
        # real ``Initiated`` time for a multipart upload.
        self.key = store.key(f"tmp/{int(time.time())}-{self.path.stem}")
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self._buffer: mmap.mmap | None = None
        self._fill = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self._queue(data)

    def write_piece(self, piece: memoryview) -> None:
        super().write_piece(piece)
        self._queue(piece)

    def _queue(self, data: bytes | bytearray | memoryview) -> None:
        if self._buffer is None:
            self._buffer = mmap.mmap(-1, self.s3.part_bytes)
        view = memoryview(data).cast("B")
        while len(view):
            n = min(len(view), self.s3.part_bytes - self._fill)
            self._buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self.s3.part_bytes:
                self._send_part()

    def _send_part(self) -> None:
        client, bucket = self.s3.client, self.s3.bucket
        if self.upload_id is None:
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        assert self._buffer is not None
        view = memoryview(self._buffer)[: self._fill]
        try:
            answer = client.upload_part(
                Bucket=bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=_PartBody(view),
                ContentLength=self._fill,
            )
        finally:
            view.release()  # the buffer is reused for the next part, and unmapped at the end
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._fill = 0

    def _free(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        self._fill = 0

    def abort(self) -> None:
        super().abort()
        self._free()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                self.s3.client.abort_multipart_upload(Bucket=self.s3.bucket, Key=self.key, UploadId=upload_id)
            except Exception as exc:  # the sweep aborts it later
                log.warning("could not abort multipart upload %s: %s", self.key, exc)

    def finish(self) -> str | None:
        """Send what is left; the temporary key of the complete object, or None for a one-part file."""
        if self.upload_id is None:
            self._free()
            return None
        if self._fill or not self.parts:
            self._send_part()
        self._free()
        self.s3.client.complete_multipart_upload(
            Bucket=self.s3.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )
        self.upload_id = None
        return self.key


class S3BlobStore(BlobStore):
    """Blobs in a bucket; ``root`` is the local cache of fetched blobs and the spool of uploads."""

    remote = True

    def __init__(self, url: str, root: Path, client: Any, part_bytes: int = 8 * MiB) -> None:
        super().__init__(root)
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client
        self.part_bytes = part_bytes

    def key(self, relpath: str) -> str:
        return self.prefix + relpath

    def writer(self, limit: int | None = None) -> S3BlobWriter:
        return S3BlobWriter(self, limit)

    def exists(self, relpath: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(relpath))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def commit(self, writer: BlobWriter) -> str:
        """Move a finished upload to its content address in the bucket; the local spool file goes."""
        assert isinstance(writer, S3BlobWriter)
        writer.close()
        rel = self.relpath(writer.sha256)
        try:
            temporary = writer.finish()
            if temporary is None:
                if not self.exists(rel):
                    with writer.path.open("rb") as f:
                        self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=f)
            else:
                self._place(temporary, rel)
        except BaseException:
            writer.abort()
            raise
        writer.path.unlink(missing_ok=True)
        return rel

    def _place(self, temporary: str, rel: str) -> None:
        """Copy a complete temporary object to its address (unless the bytes are there already), drop it."""
        from boto3.s3.transfer import TransferConfig

        try:
            if not self.exists(rel):
                self.client.copy(
                    {"Bucket": self.bucket, "Key": temporary},
                    self.bucket,
                    self.key(rel),
                    Config=TransferConfig(multipart_threshold=COPY_PART_BYTES, multipart_chunksize=COPY_PART_BYTES),
                )
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=temporary)

    def adopt(self, source: Path) -> tuple[str, str, int]:
        """Upload a finished local file (fine-tuned weights); it stays in the local cache under its address."""
        from boto3.s3.transfer import TransferConfig

        digest = hashlib.sha256()
        size = 0
        with source.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        rel = self.relpath(sha256)
        if not self.exists(rel):
            config = TransferConfig(multipart_threshold=self.part_bytes, multipart_chunksize=self.part_bytes)
            self.client.upload_file(str(source), self.bucket, self.key(rel), Config=config)
        BlobStore._place(self, source, sha256)  # the local copy: the worker that made it needs no download
        return rel, sha256, size

    def delete(self, relpath: str) -> None:
        super().delete(relpath)
        self.client.delete_object(Bucket=self.bucket, Key=self.key(relpath))

    def stored(self) -> Iterator[tuple[str, int, float]]:
        """Every object at a blob address under the prefix, as (address, size, last modified)."""
        listing = self.client.get_paginator("list_objects_v2")
        pages = listing.paginate(Bucket=self.bucket, Prefix=self.prefix + "sha256/")
        for page in pages:
            for item in page.get("Contents", []):
                relpath = item["Key"][len(self.prefix) :]
                if len(relpath.split("/")) == 3:
                    yield relpath, int(item["Size"]), item["LastModified"].timestamp()

    def fetch(self, relpath: str, sha256: str) -> Path:
        """The blob as a local file, downloaded into the cache once and checked against its sha256."""
        local = self.path(relpath)
        if local.is_file():
            return local
        partial = self.tmp_dir / f"{secrets.token_hex(16)}.partial"
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))["Body"]
            with partial.open("xb") as f:
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise BlobCorrupt(f"blob {relpath} read from {self.url} hashes to {digest.hexdigest()}, not {sha256}")
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)
        return local

    def stream(self, relpath: str) -> tuple[int, Iterator[bytes]]:
        """``(size, chunks)`` of a stored blob, read from the store as they are sent."""
        answer = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))
        return int(answer["ContentLength"]), answer["Body"].iter_chunks(CHUNK)

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Local spool files, unfinished multipart uploads and temporary objects older than ``older_than_s``."""
        now = time.time() if now is None else now
        removed = sweep_partials(self, older_than_s, now)
        cutoff = now - older_than_s
        tmp = self.key("tmp/")

        def started(key: str, reported: datetime) -> float:
            stamp = key[len(tmp) :].split("-", 1)[0]
            return float(stamp) if stamp.isdigit() else reported.timestamp()

        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=tmp):
            for upload in page.get("Uploads", []):
                if started(upload["Key"], upload["Initiated"]) < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=tmp):
            for item in page.get("Contents", []):
                if item["LastModified"].timestamp() < cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        return removed


def open_blob_store(settings: Settings) -> BlobStore:
    """The store ``BNRANK_BLOB_URL`` names: the folder ``blob_dir`` when empty, else the bucket."""
    if not settings.blob_url:
        return BlobStore(settings.blobs)
    client = make_client(
        settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id, settings.s3_secret_access_key
    )
    return S3BlobStore(settings.blob_url, settings.blobs, client, settings.s3_part_bytes)
