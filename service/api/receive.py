"""How much of a request body uvicorn reads ahead before it stops reading the socket.

uvicorn buffers at most 64 KiB of a body (``HIGH_WATER_LIMIT``) and then pauses the transport until the
app takes it, which on a streamed upload means a pause and a resume, two epoll changes and an ASGI message
per 64 KiB: the event loop, not the hashing, was what limited an upload (docs/benchmarks.md, issue 14).
``BNRANK_RECEIVE_BUFFER_BYTES`` sets that limit; uvicorn offers no option for it, so it is set on the
protocol modules, which read it on every received chunk. It is per connection, and only fills while the
app is slower than the client, so its memory is bounded by it times the uploads in flight.
"""

from __future__ import annotations

import importlib

PROTOCOLS = ("uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl")


def set_receive_buffer(limit: int) -> None:
    for name in PROTOCOLS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # httptools not installed: h11 only
            continue
        if hasattr(module, "HIGH_WATER_LIMIT"):
            module.HIGH_WATER_LIMIT = limit
