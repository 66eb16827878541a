"""Datasets referenced as ``s3://bucket/prefix``: for workers that share no folder with the API.

Only buckets named in ``BNRANK_DATASET_BUCKETS`` may be referenced (the S3 counterpart of the data roots).
The API checks a registration on its own copy, and each worker reads the dataset from its own copy: both
are `sync`'d into a local cache folder named by the listing (every key with its ETag and size), so a folder
is downloaded once per host and a changed object (new ETag) makes a new folder rather than a mix of old and
new files. The engine then reads the copy with the same checks as a local folder (every case, the labels);
a key that would land outside the copy (``..``, an absolute path, an empty segment) refuses the whole
dataset, the counterpart of a symlink out of the data roots.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.errors import Invalid
from service.core.objectstore import parse_s3_url

MAX_OBJECTS = 100_000  # a prefix listing more than this is not one dataset
COMPLETE = ".bnrank-complete"


def is_s3(uri: str) -> bool:
    return uri.strip().startswith("s3://")


@dataclass(frozen=True)
class RemoteDatasets:
    """What reading an ``s3://`` dataset needs: a client, the allowed buckets, where copies are kept."""

    client: Any
    buckets: tuple[str, ...]
    cache: Path

    def canonical(self, uri: str) -> tuple[str, str, str]:
        """``(uri, bucket, prefix)`` with the prefix ending in ``/``; Invalid when the bucket is not allowed."""
        try:
            bucket, prefix = parse_s3_url(uri.strip())
        except ValueError as exc:
            raise Invalid(f"uri {uri!r}: {exc}") from exc
        if bucket not in self.buckets:
            allowed = ", ".join(self.buckets) or "none (BNRANK_DATASET_BUCKETS is empty)"
            raise Invalid(f"uri {uri!r}: bucket {bucket!r} is not one datasets may come from; allowed: {allowed}")
        if any(part in ("", ".", "..") for part in prefix.rstrip("/").split("/")) and prefix:
            raise Invalid(f"uri {uri!r}: '.', '..' and empty segments are not allowed in dataset prefixes")
        return f"s3://{bucket}/{prefix}", bucket, prefix

    def listing(self, uri: str) -> list[tuple[str, str, int]]:
        """``(relative key, ETag, size)`` of every object below the prefix, sorted; Invalid when unusable."""
        canonical, bucket, prefix = self.canonical(uri)
        entries: list[tuple[str, str, int]] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    rel = item["Key"][len(prefix) :]
                    if rel.endswith("/") and item["Size"] == 0:  # a "folder" marker some tools create
                        continue
                    parts = rel.split("/")
                    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
                        raise Invalid(f"dataset {canonical}: object {rel!r} would land outside the dataset's folder")
                    entries.append((rel, item["ETag"].strip('"'), int(item["Size"])))
                    if len(entries) > MAX_OBJECTS:
                        raise Invalid(f"dataset {canonical} holds more than {MAX_OBJECTS} objects")
        except Invalid:
            raise
        except Exception as exc:  # no such bucket, access denied, store unreachable
            raise Invalid(f"dataset {canonical} cannot be listed: {type(exc).__name__}: {exc}") from exc
        if not entries:
            raise Invalid(f"dataset {canonical} does not exist or is empty")
        return sorted(entries)

    def sync(self, uri: str) -> Path:
        """A local copy of the dataset (downloaded unless this host has the same listing already)."""
        canonical, bucket, prefix = self.canonical(uri)
        entries = self.listing(canonical)
        name = hashlib.sha256(json.dumps([canonical, entries]).encode()).hexdigest()[:32]
        folder = self.cache / name
        if (folder / COMPLETE).is_file():
            return folder
        self.cache.mkdir(parents=True, exist_ok=True)
        draft = self.cache / f".{name}.{secrets.token_hex(6)}"
        try:
            for rel, _etag, _size in entries:
                target = draft / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(bucket, prefix + rel, str(target))
            (draft / COMPLETE).write_text(json.dumps(entries))
            try:
                os.rename(draft, folder)
            except OSError:  # another process of this host finished the same copy first
                if not (folder / COMPLETE).is_file():
                    raise
        finally:
            shutil.rmtree(draft, ignore_errors=True)
        return folder


def remote_datasets(settings: Any) -> RemoteDatasets | None:
    """The reader for ``s3://`` datasets the settings allow (None when no bucket is allowed)."""
    if not settings.dataset_buckets:
        return None
    from service.core.objectstore import make_client

    client = make_client(
        settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id, settings.s3_secret_access_key
    )
    return RemoteDatasets(client, tuple(settings.dataset_buckets), settings.preprocess_cache / "s3-datasets")
