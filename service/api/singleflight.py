"""One read for many identical requests in flight at once (per event loop).

When 64 clients poll the same unfinished ranking and its cached body expires, each of them would miss the
cache at the same moment and read the database: 64 reads, more connections than the pool keeps open, and
the latency spike the benchmark showed. Here the first request reads and the others await its result. A
waiter can get a body read a few milliseconds before it arrived, which the cache allows anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def single_flight(pending: dict[str, Any], key: str, load: Callable[[], Awaitable[T]]) -> T:
    """``await load()``, shared by every caller that asks for ``key`` while the first one runs."""
    running: asyncio.Future[T] | None = pending.get(key)
    if running is not None:
        return await asyncio.shield(running)
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    pending[key] = future
    try:
        result = await load()
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # marked retrieved: with no waiter, asyncio would log it as lost
        raise
    finally:
        pending.pop(key, None)
    future.set_result(result)
    return result
