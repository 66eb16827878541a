"""How uvicorn hands a request body to the app: how much it reads ahead, and without copying it again and again.

uvicorn buffers at most 64 KiB of a body (``HIGH_WATER_LIMIT``) and then pauses the transport until the
app takes it, which on a streamed upload means a pause and a resume, two epoll changes and an ASGI message
per 64 KiB: the event loop, not the hashing, was what limited an upload (docs/benchmarks.md, issue 14).
``BNRANK_RECEIVE_BUFFER_BYTES`` sets that limit; uvicorn offers no option for it, so it is set on the
protocol modules, which read it on every received chunk. It is per connection, and only fills while the
app is slower than the client, so its memory is bounded by it times the uploads in flight.

uvicorn's httptools protocol also gathers the pieces it receives into a ``bytearray`` and copies that into
a new ``bytes`` for every ASGI message. Appending 256 KiB pieces to a buffer of a few MiB reallocates and
copies it again and again: 2.3 GB/s against 8.9 for one join of the same pieces, a third of sha256's CPU per
byte spent on the event loop's thread (docs/benchmarks.md, issue 19). `ChunkedCycle` keeps the pieces as
they came and joins them once when the app asks (a single piece is handed over as it is, uncopied). Both
are set on uvicorn's module, where its protocol looks them up for every request.
"""

from __future__ import annotations

import importlib
from typing import Any

PROTOCOLS = ("uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl")
HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"


class Pieces:
    """The body bytes received since the app last took them, as the pieces uvicorn parsed (no copy).

    What uvicorn's protocol does with its ``bytearray``: ``+=`` a piece, ``len``, ``bytes``.
    """

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __iadd__(self, data: bytes) -> Pieces:
        if data:
            self.parts.append(bytes(data))  # bytes already (httptools): no copy
            self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def _chunked_cycle(base: type[Any]) -> type[Any]:
    class ChunkedCycle(base):  # type: ignore[misc, valid-type]
        """uvicorn's request cycle with the body kept as `Pieces` (module docstring)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.body = Pieces()

        async def receive(self) -> Any:
            message = await super().receive()  # hands over bytes(self.body), then sets a bytearray
            self.body = Pieces()
            return message

    ChunkedCycle.__qualname__ = ChunkedCycle.__name__ = "ChunkedCycle"
    return ChunkedCycle


def set_receive_buffer(limit: int) -> None:
    for name in PROTOCOLS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # httptools not installed: h11 only
            continue
        if hasattr(module, "HIGH_WATER_LIMIT"):
            module.HIGH_WATER_LIMIT = limit
        cycle = getattr(module, "RequestResponseCycle", None)
        if name == HTTPTOOLS and cycle is not None and cycle.__name__ != "ChunkedCycle":
            module.RequestResponseCycle = _chunked_cycle(cycle)
