"""The object-store backend against moto's S3 server: multipart uploads, no orphan parts, verified reads,
the sweep, and ``s3://`` datasets (allowed buckets, keys that would escape, one copy per listing)."""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.core.errors import Invalid
from service.core.objectstore import BlobCorrupt, S3BlobStore
from service.core.s3datasets import RemoteDatasets
from tests.engine.volumes import write_nnunet_dataset
from tests.s3server import MotoServer
from tests.service.conftest import Stack

PART = 5 * 1024 * 1024  # the smallest part S3 accepts


@pytest.fixture
def store(s3_server: MotoServer, tmp_path: Path) -> Iterator[S3BlobStore]:
    bucket = s3_server.new_bucket()
    yield S3BlobStore(f"s3://{bucket}/blobs", tmp_path / "cache", s3_server.client(), part_bytes=PART)


def _uploads(store: S3BlobStore) -> list[dict]:
    return store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])


def _keys(store: S3BlobStore) -> list[str]:
    contents = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix).get("Contents", [])
    return sorted(item["Key"] for item in contents)


def _write(store: S3BlobStore, data: bytes) -> object:
    writer = store.writer()
    piece = mmap.mmap(-1, 1024 * 1024)
    for start in range(0, len(data), len(piece)):
        chunk = data[start : start + len(piece)]
        piece[: len(chunk)] = chunk
        view = memoryview(piece)[: len(chunk)]
        writer.hash_piece(view)
        writer.write_piece(view)
    writer.close()
    return writer


def test_a_large_upload_goes_up_in_parts_while_written_and_lands_at_its_hash(store: S3BlobStore) -> None:
    data = os.urandom(2 * PART + 12345)
    writer = _write(store, data)
    assert writer.upload_id is not None and len(writer.parts) == 2  # sent while written; the rest at commit
    rel = store.commit(writer)
    sha = hashlib.sha256(data).hexdigest()
    assert rel == f"sha256/{sha[:2]}/{sha}"
    assert _keys(store) == [store.key(rel)]  # the temporary object is gone
    assert _uploads(store) == [] and not writer.path.exists()
    # A worker's read: downloaded into its cache once, checked against the hash.
    local = store.fetch(rel, sha)
    assert local.read_bytes() == data and local == store.path(rel)
    assert list(store.tmp_dir.iterdir()) == []


def test_a_small_upload_is_one_put_and_the_same_bytes_are_stored_once(store: S3BlobStore) -> None:
    first = store.commit(_write(store, b"tiny checkpoint"))
    again = store.commit(_write(store, b"tiny checkpoint"))
    assert first == again and _keys(store) == [store.key(first)] and _uploads(store) == []


def test_an_aborted_upload_leaves_no_part_and_no_file(store: S3BlobStore) -> None:
    writer = _write(store, os.urandom(PART + 1))
    assert len(_uploads(store)) == 1
    writer.abort()
    assert _uploads(store) == [] and _keys(store) == [] and list(store.tmp_dir.iterdir()) == []


def test_the_sweep_aborts_what_a_killed_process_left(store: S3BlobStore) -> None:
    writer = _write(store, os.urandom(PART + 1))  # never committed nor aborted: the process "died"
    store.client.put_object(Bucket=store.bucket, Key=store.key("tmp/left-over"), Body=b"x")
    assert store.sweep(older_than_s=3600) == 0  # young: might be a live upload
    assert store.sweep(older_than_s=60, now=time.time() + 3600) == 3  # spool file, multipart upload, object
    assert _uploads(store) == [] and _keys(store) == [] and not writer.path.exists()


def test_bytes_that_do_not_match_their_address_are_refused(store: S3BlobStore) -> None:
    sha = hashlib.sha256(b"the real bytes").hexdigest()
    rel = store.relpath(sha)
    store.client.put_object(Bucket=store.bucket, Key=store.key(rel), Body=b"tampered bytes")
    with pytest.raises(BlobCorrupt, match="hashes to"):
        store.fetch(rel, sha)
    assert not store.path(rel).exists() and list(store.tmp_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- datasets


def upload_folder(client: object, bucket: str, folder: Path, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")  # type: ignore[attr-defined]
    return f"s3://{bucket}/{prefix}"


def test_an_s3_dataset_is_copied_once_per_listing_and_escapes_are_refused(
    s3_server: MotoServer, tmp_path: Path
) -> None:
    client = s3_server.client()
    bucket, other = s3_server.new_bucket(), s3_server.new_bucket()
    folder = write_nnunet_dataset(tmp_path / "Dataset002_S3", n_cases=2, shape=(8, 8, 8), n_labels=1)
    uri = upload_folder(client, bucket, folder, "sets/ds2")
    remote = RemoteDatasets(client, (bucket,), tmp_path / "copies")
    copy = remote.sync(uri)
    originals = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    copied = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert copied.pop(Path(".bnrank-complete")) and copied == originals
    assert remote.sync(uri + "/") == copy  # same listing: no second download
    client.put_object(Bucket=bucket, Key="sets/ds2/imagesTr/extra.txt", Body=b"changed")
    assert remote.sync(uri) != copy  # a changed listing is a new copy, never a mix
    with pytest.raises(Invalid, match="not one datasets may come from"):
        remote.canonical(f"s3://{other}/sets/ds2")
    with pytest.raises(Invalid, match="does not exist or is empty"):
        remote.sync(f"s3://{bucket}/sets/missing")
    client.put_object(Bucket=bucket, Key="sets/evil/a//b.nii.gz", Body=b"x")
    with pytest.raises(Invalid, match="outside the dataset"):
        remote.sync(f"s3://{bucket}/sets/evil")


def test_registering_an_s3_dataset_through_the_api(stack: Stack, alice: httpx.Client, tmp_path: Path) -> None:
    if stack.s3 is None:
        pytest.skip("the stack keeps blobs in a folder: no bucket to register from")
    folder = write_nnunet_dataset(tmp_path / "Dataset003_S3", n_cases=3, shape=(16, 16, 16), n_labels=2)
    bucket = stack.settings.dataset_buckets[0]
    uri = upload_folder(stack.s3.client(), bucket, folder, "datasets/ds3")
    created = alice.post("/v1/datasets", json={"name": "s3 tiny", "uri": uri})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["uri"] == uri + "/" and body["n_cases"] == 3 and body["format"] == "nnunet"
    again = alice.post("/v1/datasets", json={"name": "s3 tiny", "uri": uri + "/"})
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    refused = alice.post("/v1/datasets", json={"name": "x", "uri": "s3://somebody-elses-bucket/ds"})
    assert refused.status_code == 422 and "somebody-elses-bucket" in refused.json()["detail"]


def test_blob_url_and_dataset_buckets_settings() -> None:
    from service.core.config import Settings

    for bad in ("s3:/bucket", "s3:///prefix", "gs://bucket/x", "/var/blobs"):
        with pytest.raises(ValueError, match="blob_url must be s3://bucket"):
            Settings(blob_url=bad)
    assert Settings(dataset_buckets="a, b").dataset_buckets == ["a", "b"]
    assert Settings(dataset_buckets='["a"]').dataset_buckets == ["a"]
    assert Settings(dataset_buckets="").dataset_buckets == []
