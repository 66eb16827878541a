"""Streaming uploads straight into the blob store: a multipart form, or the raw file as the body.

FastAPI's ``UploadFile`` first spools the whole body to a temporary file and only then hands it over, so a
1 GiB upload would be written twice and the size limit would be enforced after the fact. Here the request
body is fed chunk by chunk to python-multipart's push parser: the ``file`` part goes directly into a
`BlobWriter` (hashing as it writes), the other parts are small text fields kept in memory, and the limit
stops the stream at the first byte past it, deleting what was written. A body sent as
``application/octet-stream`` is the file itself (the fields come as query parameters): nothing to parse,
which is the faster path (`receive_raw`; docs/benchmarks.md, issue 14).

Both paths gather the file's bytes into two reused 4 MiB buffers (`_Pieces`): while one is hashed and
written on a worker thread, the event loop fills the other. One hash and one write call per 4 MiB keep
the GIL hand-overs between that thread and the event loop rare, and buffers that are reused stay mapped
and warm (fresh 64 KiB pieces handed over one by one cost more than twice as much; measured in the
benchmark notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import mmap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from bnrank.engine.architectures import ARCHITECTURES
from bnrank.engine.configs.candidate import MAX_HEAD_NAME, CandidateOptions
from bnrank.engine.options import offered
from service.core.blobs import BlobStore, BlobTooLarge, BlobWriter
from service.core.checkpoints import Declared

FIELD_LIMIT = 64 * 1024  # a text field larger than this is not a name or a JSON network definition
CANDIDATE_FIELDS = tuple(o.name for o in offered(CandidateOptions, "api"))  # declared per checkpoint (head)
# the only text fields, each at most once
FORM_FIELDS = ("name", "modality", "architecture", "network_def", *CANDIDATE_FIELDS)
PIECE_BYTES = 4 * 1024 * 1024  # the writer thread hashes and writes the file in pieces of this size
# Multipart headers and the text fields, allowed on top of the file size limit: every field at its limit,
# plus room for part headers. The whole body is held to this, before the file part and after it.
FORM_OVERHEAD = len(FORM_FIELDS) * FIELD_LIMIT + 64 * 1024
HEADER_LIMIT = 8 * 1024  # one part's headers together (a content disposition with a file name, a type)
MODALITIES = ("CT", "MR", "other")


class UploadError(Exception):
    """The request is not a usable upload; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    writer: BlobWriter | None = None
    filename: str | None = None


class _Collector:
    """Callback target for the push parser; it only buffers, the async loop does the I/O."""

    def __init__(self, store: BlobStore, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.result = ParsedUpload()
        self.pending: list[memoryview] = []  # file bytes parsed since the last `take`, not yet copied
        self.pending_bytes = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._name: str | None = None
        self._text: bytearray | None = None
        self._in_file = False

    # parser callbacks -------------------------------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0
        self._name, self._text, self._in_file = None, None, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]
        self._count_header(end - start)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._count_header(end - start)

    def _count_header(self, n: int) -> None:
        """All of one part's headers together are bounded: they are held in memory until the part's data."""
        self._header_bytes += n
        if self._header_bytes > HEADER_LIMIT:
            raise UploadError(422, f"a multipart part's headers are longer than {HEADER_LIMIT} bytes")

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if b"filename" in params or name == "file":
            if name != "file":
                raise UploadError(422, f"unexpected file part {name!r}: send the checkpoint as the 'file' part")
            if self.result.writer is not None:
                raise UploadError(422, "more than one 'file' part: upload one checkpoint per request")
            self.result.filename = params.get(b"filename", b"").decode("utf-8", "replace") or None
            self.result.writer = self.store.writer(self.limit)
            self._in_file = True
        elif name not in FORM_FIELDS:
            allowed = ", ".join(FORM_FIELDS)
            raise UploadError(422, f"unknown form field(s) {name!r}; allowed: file, {allowed}")
        elif name in self.result.fields:
            raise UploadError(422, f"form field {name!r} is sent more than once")
        else:
            self._text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending.append(memoryview(data)[start:end])
            self.pending_bytes += end - start
        elif self._text is not None:
            self._text += data[start:end]
            if len(self._text) > FIELD_LIMIT:
                raise UploadError(422, f"form field {self._name!r} is longer than {FIELD_LIMIT} bytes")

    def on_part_end(self) -> None:
        if self._text is not None and self._name:
            try:
                self.result.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UploadError(422, f"form field {self._name!r} is not UTF-8 text") from exc
        self._in_file = False

    def take(self) -> list[memoryview]:
        chunks, self.pending, self.pending_bytes = self.pending, [], 0
        return chunks


class _Pieces:
    """The file's bytes gathered into two reused buffers; a full one is hashed and written on a thread
    while the event loop fills the other, so the disk and the hash overlap with the network.

    Memory: two buffers (2 × PIECE_BYTES), whatever the file's size. The size limit is checked on every
    chunk against everything received, before it is copied.
    """

    def __init__(self, writer: BlobWriter, limit: int) -> None:
        self.writer = writer
        self.limit = limit
        self.received = 0
        # mmap: page-aligned memory, which a direct (O_DIRECT) write needs (`BlobWriter.write_piece`).
        self._buffers = [mmap.mmap(-1, PIECE_BYTES), mmap.mmap(-1, PIECE_BYTES)]
        self._current = 0
        self._fill = 0
        self._in_flight: asyncio.Future[Any] | None = None

    async def add(self, chunks: list[memoryview]) -> None:
        for chunk in chunks:
            self.received += len(chunk)
            if self.received > self.limit:
                raise BlobTooLarge(self.limit)  # at the chunk that passes the limit, not at a later flush
            while len(chunk):
                buffer = self._buffers[self._current]
                n = min(len(chunk), PIECE_BYTES - self._fill)
                buffer[self._fill : self._fill + n] = chunk[:n]
                self._fill += n
                chunk = chunk[n:]
                if self._fill == PIECE_BYTES:
                    await self._hand_over()

    async def _hand_over(self) -> None:
        """Send the current buffer to the writer thread (after the previous one is done) and switch."""
        await self.wait()
        piece = memoryview(self._buffers[self._current])[: self._fill]
        # Hashing (CPU) and the write (the disk) release the GIL: on two threads they overlap.
        self._in_flight = asyncio.ensure_future(
            asyncio.gather(
                run_in_threadpool(self.writer.hash_piece, piece), run_in_threadpool(self.writer.write_piece, piece)
            )
        )
        self._current, self._fill = 1 - self._current, 0

    async def wait(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight

    async def finish(self) -> None:
        """Write what is left; the file is then complete."""
        if self._fill:
            await self._hand_over()
        await self.wait()

    async def abandon(self) -> None:
        """Let a write in progress end (it holds the file), whatever it raised, before the file goes."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(self.wait())


async def receive_upload(
    headers: dict[str, str], body: AsyncIterator[bytes], store: BlobStore, limit: int
) -> ParsedUpload:
    """Parse a multipart body, writing its ``file`` part to the blob store's tmp folder.

    On success the caller owns ``result.writer`` (commit or abort it). On any error nothing is left behind.
    """
    content_type, params = parse_options_header(headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(422, "expected a multipart/form-data body with a 'file' part")
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise UploadError(413, f"upload of {int(declared)} bytes exceeds the limit of {limit} bytes")

    collector = _Collector(store, limit)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    total = 0
    pieces: _Pieces | None = None
    try:
        async for chunk in body:
            total += len(chunk)
            if total > limit + FORM_OVERHEAD:  # the file part alone is held to `limit` by `_Pieces`
                raise UploadError(413, f"upload exceeds the limit of {limit} bytes")
            parser.write(chunk)
            if collector.result.writer is not None:
                pieces = pieces or _Pieces(collector.result.writer, limit)
                await pieces.add(collector.take())
        parser.finalize()
        if pieces is not None:
            await pieces.add(collector.take())
            await pieces.finish()
    except BaseException as exc:
        if pieces is not None:
            await pieces.abandon()
        if collector.result.writer is not None:
            collector.result.writer.abort()
        _raise_refusal(exc, limit)
        raise
    if collector.result.writer is None:
        raise UploadError(422, "the form has no 'file' part: send the checkpoint as multipart field 'file'")
    collector.result.writer.close()
    return collector.result


async def receive_raw(
    headers: dict[str, str], body: AsyncIterator[bytes], store: BlobStore, limit: int, fields: dict[str, str]
) -> ParsedUpload:
    """Write an ``application/octet-stream`` body (the file itself) to the blob store's tmp folder.

    ``fields`` are the form's text fields, sent as query parameters. The caller owns ``result.writer``, as
    with `receive_upload`; on any error nothing is left behind.
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"upload of {int(declared)} bytes exceeds the limit of {limit} bytes")
    writer = store.writer(limit)
    pieces = _Pieces(writer, limit)
    try:
        async for chunk in body:
            await pieces.add([memoryview(chunk)])
        await pieces.finish()
    except BaseException as exc:
        await pieces.abandon()
        writer.abort()
        _raise_refusal(exc, limit)
        raise
    if writer.size == 0:
        writer.abort()
        raise UploadError(422, "the body is empty: send the checkpoint's bytes")
    writer.close()
    return ParsedUpload(fields=fields, writer=writer)


def _raise_refusal(exc: BaseException, limit: int) -> None:
    """The UploadError for an exception that means a bad upload (returns for any other)."""
    if isinstance(exc, BlobTooLarge):
        raise UploadError(413, f"upload exceeds the limit of {limit} bytes") from exc
    if isinstance(exc, MultipartParseError | FormParserError):
        raise UploadError(422, f"malformed multipart body: {exc}") from exc
    if isinstance(exc, ClientDisconnect):
        raise UploadError(400, "the client disconnected before the upload was complete") from exc


MAX_DEF_NUMBER = 2**31  # no width, kernel, stride or count of a network is larger; 1e308 is not a stride
MAX_DEF_DEPTH = 32  # nesting of a network definition (a MONAI network's kwargs are a few levels deep)


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a network definition may hold")


def _check_def_values(value: Any, where: str = "network_def", depth: int = 0) -> None:
    """Refuse what the database could not store or a network could not be built from: NaN/Infinity, numbers
    beyond any layer size, NUL characters, absurd nesting. Checked here, so it is a 422 now rather than a
    failure in the worker later."""
    if depth > MAX_DEF_DEPTH:
        raise UploadError(422, f"form field 'network_def' is nested deeper than {MAX_DEF_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > MAX_DEF_NUMBER:
            raise UploadError(422, f"form field 'network_def': {where} = {value!r} is not a usable number")
    elif isinstance(value, str):
        if "\x00" in value:
            raise UploadError(422, f"form field 'network_def': {where} contains a NUL character")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_def_values(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_def_values(key, where, depth + 1)
            _check_def_values(item, f"{where}.{key}", depth + 1)


def _parse_network_def(text: str) -> dict[str, Any]:
    try:
        network_def = json.loads(text, parse_constant=_json_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise UploadError(422, f"form field 'network_def' is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise UploadError(422, f"form field 'network_def' is nested deeper than {MAX_DEF_DEPTH} levels") from exc
    if not isinstance(network_def, dict):
        raise UploadError(422, "form field 'network_def' must be a JSON object")
    _check_def_values(network_def)
    return network_def


def checkpoint_form(upload: ParsedUpload) -> Declared:
    """The text fields of a checkpoint upload (name, modality, architecture or network_def), checked."""
    fields = upload.fields
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        raise UploadError(422, f"unknown form field(s) {', '.join(unknown)}; allowed: {', '.join(FORM_FIELDS)}")
    name = (fields.get("name") or upload.filename or "").strip()
    if not name:
        raise UploadError(422, "form field 'name' is required (or send a file name)")
    if len(name) > 300:
        raise UploadError(422, "form field 'name' is longer than 300 characters")
    if "\x00" in name:
        raise UploadError(422, "form field 'name' contains a NUL character")
    modality = fields.get("modality") or None
    if modality is not None and modality not in MODALITIES:
        raise UploadError(422, f"form field 'modality' must be one of {', '.join(MODALITIES)}, got {modality!r}")
    architecture = fields.get("architecture") or None
    network_def = None
    if fields.get("network_def"):
        network_def = _parse_network_def(fields["network_def"])
        if architecture:
            raise UploadError(422, "send either 'architecture' or 'network_def', not both")
    elif architecture is not None and architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UploadError(422, f"form field 'architecture': unknown architecture {architecture!r}; known: {known}")
    head = fields.get("head") or None
    if head is not None and (len(head) > MAX_HEAD_NAME or "\x00" in head):
        raise UploadError(422, f"field 'head' must be a layer name of at most {MAX_HEAD_NAME} characters, no NUL")
    return Declared(name, modality, architecture, network_def, head)
