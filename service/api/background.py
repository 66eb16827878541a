"""What an API process does besides answering requests, for as long as it runs.

- Abandoned partial uploads (``*.partial`` in the blob store, left by a process killed mid-upload, and on
  an object store the multipart uploads it had begun) are deleted at startup and then every
  ``partial_sweep_interval_s``, once older than ``partial_grace_s``.
- The forkserver that inspects uploads (bnrank.engine.inspect_isolated) is started in the background, so
  the first upload does not wait for it to import torch.
- With ``metrics_port`` set, Prometheus metrics are served on that port (and ``metrics_host``) instead of
  the API's own, so they can be kept off the public interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import start_http_server
from starlette.concurrency import run_in_threadpool

from bnrank.engine.inspect_isolated import prestart

log = logging.getLogger(__name__)


def _sweep(state: Any) -> None:
    try:
        removed = state.blobs.sweep(state.settings.partial_grace_s)
    except Exception as exc:  # a file system or object store error: the next sweep tries again
        log.warning("cannot sweep partial uploads: %s", exc)
        return
    if removed:
        log.info("deleted %d abandoned partial upload(s)", removed)


async def _sweep_forever(state: Any) -> None:
    while True:
        await asyncio.sleep(state.settings.partial_sweep_interval_s)
        await run_in_threadpool(_sweep, state)


def _prestart() -> None:
    try:
        prestart()
    except Exception as exc:  # the first upload then starts it itself, only slower
        log.warning("could not start the inspection forkserver early: %s", exc)


@contextlib.asynccontextmanager
async def housekeeping(state: Any) -> AsyncIterator[None]:
    settings = state.settings
    await run_in_threadpool(_sweep, state)
    threading.Thread(target=_prestart, name="inspect-forkserver", daemon=True).start()
    server = None
    if settings.metrics_port:
        server, _thread = start_http_server(settings.metrics_port, settings.metrics_host, state.metrics.registry)
    task = asyncio.create_task(_sweep_forever(state))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if server is not None:
            server.shutdown()
            server.server_close()
