"""Keep the objects that live as long as the process out of the garbage collector's full passes.

An API process imports torch, MONAI and the engine: about 400,000 objects that are never freed. CPython's
oldest generation is collected whenever the objects promoted into it since the last full pass exceed a
quarter of it, and under load (many requests in flight, their objects surviving young collections) that was
every one to two seconds, each pass scanning all of them: 100-300 ms with every request of the process
waiting, the tail of GET latency at 64 clients (docs/benchmarks.md, issue 19). `gc.freeze` moves what exists
at startup into a permanent generation that no pass scans; the garbage collector keeps collecting what
requests create.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what start-up left as garbage, then freeze every object still alive (once the app is built)."""
    gc.collect()
    gc.freeze()
