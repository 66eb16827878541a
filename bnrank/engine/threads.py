"""Torch thread count from the cores this process may really use.

On the 2-core development machine two processes with two threads each made every step ten times
slower than one thread each: oversubscription is the most expensive mistake a CPU worker can make.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup v2 CPU quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def configure_threads(concurrent_jobs: int = 1, threads: int | None = None) -> int:
    """Set torch's intra-op threads to cores / concurrent jobs (or an explicit count); returns it."""
    import torch  # here, not at the top: the CLI reads available_cores() before it knows it needs torch

    n = threads if threads and threads > 0 else max(1, available_cores() // max(1, concurrent_jobs))
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # may only be set once, before any parallel work
        torch.set_num_interop_threads(1)
    return n
