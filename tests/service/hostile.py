"""The hostile review's reproductions as functions, shared by the regression tests and bench/hardening.py.

- `PeakRss`: the peak resident memory a process reached while a block ran, read from ``/proc`` (the peak
  counter ``VmHWM`` reset through ``clear_refs`` first, and ``VmRSS`` sampled beside it where the reset is
  not allowed), minus its resident memory before.
- `flood`: one request with a large body sent over a raw socket, chunk by chunk, stopping as soon as the
  server answers (as curl does with ``-T -``): the answer's status and how much of the body went out.
- `volume_bomb`: a .nii.gz whose header declares a large volume of zeros, written by streaming zeros
  through gzip (a few MB on disk, never the whole array in memory).
"""

from __future__ import annotations

import gzip
import itertools
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import nibabel as nib
import numpy as np

MiB = 1024**2


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


class PeakRss:
    """``with PeakRss(pid) as peak: ...`` then ``peak.growth``: bytes of resident memory above the start."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.hwm_reset = False

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, KeyError):
                return
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.before = rss_bytes(self.pid)
        self.peak = self.before
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")  # reset the peak resident set size (VmHWM) to the current one
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm_reset:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM") * 1024)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.before)


def zeros(total: int, piece: int = MiB) -> Iterator[bytes]:
    """``total`` zero bytes in pieces (one reused buffer)."""
    buffer = bytes(piece)
    while total > 0:
        yield buffer[: min(piece, total)]
        total -= piece


def flood(
    host: str, port: int, path: str, *, headers: dict[str, str], length: int, body: Iterable[bytes]
) -> tuple[int, int]:
    """POST ``body`` (declared as ``length`` bytes), stopping as soon as the server answers.

    Returns (status, body bytes sent). A server that closes the connection without an answer reads as 0.
    """
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    sent = 0
    answer = b""
    with socket.create_connection((host, port)) as conn:
        conn.sendall(request)
        try:
            for piece in body:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable:
                    break
                conn.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        conn.settimeout(120)
        try:
            while b"\r\n" not in answer:
                data = conn.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    status_line = answer.split(b"\r\n", 1)[0].split()
    return (int(status_line[1]) if len(status_line) > 1 else 0), sent


def multipart_head(boundary: str, file_bytes: bytes) -> bytes:
    """A multipart form's ``file`` part (complete), to be followed by more parts."""
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.safetensors"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + file_bytes
        + b"\r\n"
    )


def text_fields(boundary: str, count: int, size: int) -> tuple[int, Iterator[bytes]]:
    """``count`` distinct text fields of ``size`` bytes each (the review's 17,000 × 60 KB) and the form's end:
    (length, pieces), generated as they are sent."""
    value = b"x" * size

    def part(i: int) -> bytes:
        return f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'.encode() + value + b"\r\n"

    end = f"--{boundary}--\r\n".encode()
    length = sum(len(part(i)) for i in range(count)) + len(end)
    return length, itertools.chain((part(i) for i in range(count)), [end])


def new_boundary() -> str:
    return "b" + secrets.token_hex(8)


def volume_bomb(path: Path, shape: tuple[int, int, int], dtype: str = "uint16") -> Path:
    """A .nii.gz of zeros declaring ``shape``: streamed, so writing it holds one slab in memory."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.dtype(dtype))
    header.set_data_shape(shape)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header.set_xyzt_units("mm")
    header["vox_offset"] = 352
    total = int(np.prod(shape)) * np.dtype(dtype).itemsize
    header_bytes = header.binaryblock + b"\x00" * 4  # 348-byte header + 4 bytes of (empty) extension flag
    slab = bytes(16 * MiB)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header_bytes)
        written = 0
        while written < total:
            piece = min(len(slab), total - written)
            out.write(slab[:piece])
            written += piece
    return path
