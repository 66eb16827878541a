"""Streamed uploads (service/api/uploads.py): multipart and raw bodies land in the blob store byte for byte,
through the two reused piece buffers, with and without direct I/O; the limit stops them; raw uploads work
end to end through the API."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.uploads import PIECE_BYTES, UploadError, receive_raw, receive_upload
from service.core import blobs
from service.core.blobs import BlobStore
from tests.service.conftest import Stack, key_of, make_checkpoint, upload

BOUNDARY = "testboundary42"


async def _chunks(data: bytes, sizes: tuple[int, ...] = (65536, 1, 4093, 70000)) -> AsyncIterator[bytes]:
    """``data`` in pieces of uneven sizes, as a network delivers it (never aligned to the piece buffers)."""
    at, i = 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        yield data[at : at + size]
        at, i = at + size, i + 1


def _form(payload: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
    head += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n\r\n'
    return head.encode() + payload + f"\r\n--{BOUNDARY}--\r\n".encode()


FORM_HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
@pytest.mark.parametrize("size", [0, 10, PIECE_BYTES, 2 * PIECE_BYTES + 12345])
def test_bodies_land_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool, size: int) -> None:
    monkeypatch.setattr(blobs, "DIRECT", direct and blobs.DIRECT)
    payload = os.urandom(size)
    store = BlobStore(tmp_path)

    async def run() -> list[tuple[str, bytes, int]]:
        got = []
        form = await receive_upload(FORM_HEADERS, _chunks(_form(payload)), store, limit=1 << 30)
        raw = None if size == 0 else await receive_raw({}, _chunks(payload), store, 1 << 30, {"name": "y"})
        for result in (form, raw):
            if result is not None:
                assert result.writer is not None
                got.append((result.writer.sha256, result.writer.path.read_bytes(), result.writer.size))
                result.writer.abort()
        assert form.fields == {"name": "x"} and (raw is None or raw.fields == {"name": "y"})
        return got

    for digest, stored, length in asyncio.run(run()):
        assert (digest, length) == (hashlib.sha256(payload).hexdigest(), size)
        assert stored == payload
    assert list(store.tmp_dir.iterdir()) == []


def test_the_limit_stops_a_raw_body_and_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    payload = os.urandom(PIECE_BYTES + 100)

    async def run(headers: dict[str, str]) -> None:
        await receive_raw(headers, _chunks(payload), store, PIECE_BYTES, {})

    for headers in ({}, {"content-length": str(len(payload))}):  # streamed, and declared up front
        with pytest.raises(UploadError) as refused:
            asyncio.run(run(headers))
        assert refused.value.status == 413 and str(PIECE_BYTES) in refused.value.detail
    assert list(store.tmp_dir.iterdir()) == []


def test_an_empty_raw_body_is_422(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(UploadError, match="empty"):
        asyncio.run(receive_raw({}, _chunks(b""), store, 100, {}))
    assert list(store.tmp_dir.iterdir()) == []


def test_raw_upload_through_the_api(alice: httpx.Client, tmp_path: Path) -> None:
    """The file as the body, fields in the query: the same checkpoint as a multipart upload of those bytes."""
    path = make_checkpoint(tmp_path / "raw.safetensors", seed=int.from_bytes(os.urandom(3), "big"))
    raw = alice.post(
        "/v1/checkpoints",
        params={"name": "raw one", "modality": "CT"},
        content=path.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 201, raw.text
    assert (raw.json()["name"], raw.json()["modality"], raw.json()["format"]) == ("raw one", "CT", "safetensors")
    assert raw.json()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    again = upload(alice, path)
    assert again.status_code == 200 and again.json()["id"] == raw.json()["id"]
    alice.delete(f"/v1/checkpoints/{raw.json()['id']}")


def test_raw_upload_refusals(alice: httpx.Client, tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "r.safetensors", seed=3)
    octet = {"Content-Type": "application/octet-stream"}
    nameless = alice.post("/v1/checkpoints", content=path.read_bytes(), headers=octet)
    assert nameless.status_code == 422 and "'name'" in nameless.json()["detail"]
    bad_modality = alice.post("/v1/checkpoints", params={"name": "m", "modality": "PET"}, content=b"x", headers=octet)
    assert bad_modality.status_code == 422 and "modality" in bad_modality.json()["detail"]
    with path.open("rb") as f:
        both = alice.post("/v1/checkpoints", params={"name": "q"}, files={"file": (path.name, f)})
    assert both.status_code == 422 and "query fields (name)" in both.json()["detail"]


def test_a_raw_upload_over_the_json_body_limit_is_streamed(stack: Stack, serve_app: Any, alice: httpx.Client) -> None:
    """The JSON body ceiling (BNRANK_MAX_JSON_BODY_BYTES) is for JSON: a raw upload larger than it reaches the
    upload route, which streams it under the upload limit; JSON routes still refuse such a body."""
    settings = stack.settings.model_copy(update={"max_json_body_bytes": 1024})
    payload = b"NOT A CHECKPOINT" + os.urandom(64 * 1024)
    octet = {"Authorization": f"Bearer {key_of(alice)}", "Content-Type": "application/octet-stream"}
    with serve_app(settings) as url:
        raw = httpx.post(f"{url}/v1/checkpoints", params={"name": "big"}, content=payload, headers=octet, timeout=60)
        assert raw.status_code == 422 and "limit" not in raw.json()["detail"], raw.text  # read, then not a format
        elsewhere = httpx.post(f"{url}/v1/rankings", content=payload, headers=octet, timeout=60)
        assert elsewhere.status_code == 413, elsewhere.text


def test_a_refused_direct_write_falls_back_to_the_page_cache(tmp_path: Path) -> None:
    """A file system that opens with O_DIRECT but refuses the write: the piece goes through the page cache."""
    writer = BlobStore(tmp_path).writer()
    writer._direct_fd = os.open(writer.path, os.O_RDONLY)  # a descriptor every write to fails on
    buffer = mmap.mmap(-1, 2 * blobs.DIRECT_BLOCK)
    data = os.urandom(len(buffer))
    buffer[:] = data
    writer.write_piece(memoryview(buffer))
    writer.write_piece(memoryview(buffer))
    assert writer._direct_fd == -1 and writer.size == 2 * len(data)
    writer.close()
    assert writer.path.read_bytes() == data + data
    writer.abort()
