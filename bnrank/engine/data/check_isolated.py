"""Checking a dataset folder in a child process that has its own memory and time limits.

`open_dataset(check=True)` decompresses every volume of every case. The NIfTI header bounds each volume
(``max_volume_bytes``) before it is read, but a volume just inside that bound is still gigabytes once
decompressed (a 9 MB .nii.gz can declare 1024³ uint16: 2 GiB), and whatever a stranger's files trip in
nibabel, gzip or numpy is best paid for by a process that can die. So a service runs the check here: a
child under ``RLIMIT_AS`` (address space) and a wall-clock limit reads one volume at a time and sends back
the opened `Dataset` and its fingerprint; the caller's memory does not grow with the volumes.

The child comes from the same forkserver as checkpoint inspection (see inspect_isolated.py), so it starts
in tens of milliseconds; ``spawn`` where there is no forkserver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnrank.engine import errors
from bnrank.engine.data.checks import DEFAULT_MAX_VOLUME_BYTES
from bnrank.engine.data.layouts import Dataset
from bnrank.engine.errors import BNRankError, DatasetError, LimitExceededError
from bnrank.engine.isolation import limit_memory, run_isolated

DEFAULT_TIME_LIMIT_S = 900.0


def memory_limit_for(max_volume_bytes: int) -> int:
    """A child memory limit (MiB) for volumes up to `max_volume_bytes`: 3 × the volume plus 512 MiB.

    One volume is held at a time; its checks add at most a boolean mask (NaN test) or a sorted copy of the
    label (``np.unique``), and gzip and nibabel need some tens of MiB beside it.
    """
    return math.ceil(3 * max_volume_bytes / 1024**2) + 512


@dataclass(frozen=True)
class CheckedDataset:
    """What a registration needs: the dataset as opened (usable cases, problems) and its fingerprint."""

    dataset: Dataset
    fingerprint: str


def _child(conn: Any, root: str, max_volume_bytes: int, memory_limit_mib: int) -> None:
    from bnrank.engine.data import PreprocessConfig, compute_fingerprint, open_dataset

    try:
        limit_memory(memory_limit_mib)
        dataset = open_dataset(root, check=True, max_volume_bytes=max_volume_bytes)
        result: tuple[Any, ...] = ("ok", CheckedDataset(dataset, compute_fingerprint(dataset, PreprocessConfig())))
    except MemoryError:
        result = ("error", "LimitExceededError", f"checking the dataset ran out of its {memory_limit_mib} MiB limit")
    except BNRankError as exc:
        result = ("error", type(exc).__name__, str(exc))
    except Exception as exc:  # a stranger's files can trip anything: still a dataset that cannot be used
        result = ("error", "DatasetError", f"the dataset cannot be read ({type(exc).__name__}: {str(exc)[:300]})")
    try:
        conn.send(result)
    finally:
        conn.close()


def check_dataset_isolated(
    root: str | Path,
    *,
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
    memory_limit_mib: int | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> CheckedDataset:
    """`open_dataset(check=True)` and its fingerprint, in a limited child process.

    Raises what the engine raises for an unusable dataset (DatasetError and kin), or LimitExceededError when
    the child ran out of memory or time. Blocking: call it from a thread, not on an event loop.
    """
    memory_limit_mib = memory_limit_mib or memory_limit_for(max_volume_bytes)
    reply = run_isolated(
        _child,
        (str(root), max_volume_bytes, memory_limit_mib),
        time_limit_s=time_limit_s,
        memory_limit_mib=memory_limit_mib,
        limit_error=LimitExceededError,
        failure_error=DatasetError,
        doing="checking the dataset",
        process="the process checking the dataset",
    )
    if reply[0] == "ok":
        return reply[1]
    _, class_name, message = reply
    cls = getattr(errors, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BNRankError)):
        cls = DatasetError
    raise cls(message)


__all__ = ["CheckedDataset", "check_dataset_isolated", "memory_limit_for"]
