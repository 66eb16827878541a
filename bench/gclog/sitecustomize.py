"""Log every garbage-collector pass of every Python process started with this folder on ``PYTHONPATH``.

    PYTHONPATH=bench/gclog GC_LOG_PREFIX=/tmp/gc .venv/bin/python bench/api.py --processes 1 --blobs "" \
        --receive-buffers ""

writes ``/tmp/gc.<pid>``, one line per pass: wall time, generation, milliseconds, objects collected (flushed
every 2 s). It found the GET tail of issue 19 (full passes of 200-300 ms under load; docs/benchmarks.md)
without a change to the service. Does nothing unless ``GC_LOG_PREFIX`` is set (not a ``BNRANK_`` name: the
launcher hands a child only the settings among those).
"""

from __future__ import annotations

import gc
import os
import threading
import time

_OUT = os.environ.get("GC_LOG_PREFIX")

if _OUT:
    _started: list[float] = [0.0]
    _log: list[tuple[float, int, float, int]] = []

    def _record(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
        else:
            ms = 1000 * (time.perf_counter() - _started[0])
            _log.append((time.time(), info["generation"], ms, info["collected"]))

    def _flush_forever() -> None:
        while True:
            time.sleep(2)
            with open(f"{_OUT}.{os.getpid()}", "w") as f:
                f.writelines(f"{t:.3f} {g} {ms:.2f} {n}\n" for t, g, ms, n in list(_log))

    gc.callbacks.append(_record)
    threading.Thread(target=_flush_forever, name="gc-log", daemon=True).start()
