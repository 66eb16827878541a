"""A content-addressed blob store: files live under ``sha256/<2 hex>/<sha256>`` below the blob folder.

Addressing by content makes a re-upload free and lets two owners' identical checkpoints share one file,
while the database keeps a row per owner. Writes go to ``tmp/`` first and are moved into place with an
atomic rename only when complete, so a crash, a client that hangs up or an upload over the size limit
never leaves a partial file where a reader could find it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
DIRECT = hasattr(os, "O_DIRECT")  # Linux; elsewhere every write goes through the page cache
DIRECT_BLOCK = 4096  # O_DIRECT alignment of sizes and offsets (the common logical block size)


class BlobTooLarge(Exception):
    """The stream passed the size limit; the partial file has already been removed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class BlobWriter:
    """Hashes and counts while writing; ``write`` refuses the byte that passes the limit."""

    def __init__(self, store: BlobStore, limit: int | None) -> None:
        self.store = store
        self.limit = limit
        self.path = store.tmp_dir / f"{secrets.token_hex(16)}.partial"
        self._file: BinaryIO | None = self.path.open("xb")
        self._hash = hashlib.sha256()
        self._direct_fd: int | None = None  # opened on the first aligned piece; -1: not available
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._file is None:
            raise ValueError("writer is closed")
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            self.abort()
            raise BlobTooLarge(self.limit)
        self._hash.update(data)
        self._file.write(data)

    def write_many(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def hash_piece(self, piece: memoryview) -> None:
        """Hash a piece of a streamed upload (`write_piece` stores it; the two may run on two threads)."""
        self._hash.update(piece)

    def write_piece(self, piece: memoryview) -> None:
        """Append a piece, bypassing the page cache (``O_DIRECT``) when the piece allows it.

        A multi-GiB upload written through the page cache costs a page allocation and a copy per 4 KiB, and
        on the virtual machines measured for issue 14 that was the slowest stage of an upload (about half the
        speed of hashing). A direct write needs a page-aligned buffer (the caller's, e.g. an ``mmap``), whole
        blocks and an aligned offset; a piece that is not (the last one) goes through the normal file, and
        where the file system refuses ``O_DIRECT`` (tmpfs) every piece does.
        """
        if self._file is None:
            raise ValueError("writer is closed")
        n = len(piece)
        if self.limit is not None and self.size + n > self.limit:
            self.abort()
            raise BlobTooLarge(self.limit)
        direct = self._direct() if n % DIRECT_BLOCK == 0 and self.size % DIRECT_BLOCK == 0 else None
        written = 0
        if direct is not None:
            try:
                while written < n:
                    written += os.pwrite(direct, piece[written:], self.size + written)
            except OSError:  # opened, but refused for this file system or device: the page cache from here on
                os.close(direct)
                self._direct_fd, written = -1, 0
        if written < n:
            self._file.flush()
            while written < n:
                written += os.pwrite(self._file.fileno(), piece[written:], self.size + written)
        self.size += n

    def _direct(self) -> int | None:
        """A second descriptor of the partial file opened with ``O_DIRECT``, or None where there is none."""
        if self._direct_fd is None:
            try:
                self._direct_fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_DIRECT", 0)) if DIRECT else -1
            except OSError:
                self._direct_fd = -1
        return self._direct_fd if self._direct_fd >= 0 else None

    def close(self) -> None:
        if self._direct_fd is not None and self._direct_fd >= 0:
            os.close(self._direct_fd)
        self._direct_fd = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        """Close and delete the partial file (safe to call more than once)."""
        self.close()
        self.path.unlink(missing_ok=True)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class BlobStore:
    """Blobs in a folder (the embedded default); service/core/objectstore.py keeps them in an S3 bucket."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def relpath(sha256: str) -> str:
        return f"sha256/{sha256[:2]}/{sha256}"

    def path(self, relpath: str) -> Path:
        """Absolute path of a stored blob; refuses anything that is not a store address."""
        parts = relpath.split("/")
        if len(parts) != 3 or parts[0] != "sha256" or not all(p.isalnum() for p in parts[1:]):
            raise ValueError(f"not a blob address: {relpath!r}")
        return self.root / relpath

    def writer(self, limit: int | None = None) -> BlobWriter:
        return BlobWriter(self, limit)

    def _place(self, source: Path, sha256: str) -> str:
        """Rename a complete file to its address; an identical blob already there is kept."""
        rel = self.relpath(sha256)
        target = self.root / rel
        if target.exists():
            source.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        return rel

    def commit(self, writer: BlobWriter) -> str:
        """Move a finished upload to its address."""
        writer.close()
        return self._place(writer.path, writer.sha256)

    def adopt(self, source: Path) -> tuple[str, str, int]:
        """Move a finished file (e.g. fine-tuned weights) into the store; returns (address, sha256, size).

        ``source`` should be on the store's file system (``tmp_dir``) so the move is a rename.
        """
        digest = hashlib.sha256()
        size = 0
        with source.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return self._place(source, digest.hexdigest()), digest.hexdigest(), size

    def delete(self, relpath: str) -> None:
        self.path(relpath).unlink(missing_ok=True)

    def stored(self) -> Iterator[tuple[str, int, float]]:
        """Every blob at a store address as (address, size, last written); partial uploads are not listed."""
        for path in sorted((self.root / "sha256").glob("*/*")):
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted while we looked
                continue
            if path.is_file():
                yield path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime

    def fetch(self, relpath: str, sha256: str) -> Path:
        """The blob as a local file to load: here the stored file itself (its address is its hash)."""
        return self.path(relpath)

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Remove what interrupted uploads left behind; returns how many."""
        return sweep_partials(self, older_than_s, now)


def sweep_partials(store: BlobStore, older_than_s: float, now: float | None = None) -> int:
    """Delete unfinished uploads (``tmp/*.partial``) nobody has written to for ``older_than_s``; returns how many.

    A live upload touches its file with every chunk, so only the leftovers of a process that died mid-upload
    (killed, out of power) are old: nothing else would ever remove them.
    """
    cutoff = (time.time() if now is None else now) - older_than_s
    removed = 0
    for path in store.tmp_dir.glob("*.partial"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # finished or aborted while we looked
            continue
    return removed
