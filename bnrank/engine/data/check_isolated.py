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
import multiprocessing
import resource
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnrank.engine import errors
from bnrank.engine.data.checks import DEFAULT_MAX_VOLUME_BYTES
from bnrank.engine.data.layouts import Dataset
from bnrank.engine.errors import BNRankError, DatasetError, LimitExceededError

DEFAULT_TIME_LIMIT_S = 900.0
_GRACE_S = 5.0


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


def _limit_memory(limit_mib: int) -> None:
    """Address space: what the child maps now (torch's libraries, when forked from a warm server) + the limit."""
    in_use = 0
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            in_use = next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:")), 0)
    except OSError:
        pass
    limit = in_use + limit_mib * 1024**2
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _child(conn: Any, root: str, max_volume_bytes: int, memory_limit_mib: int) -> None:
    from bnrank.engine.data import PreprocessConfig, compute_fingerprint, open_dataset

    try:
        _limit_memory(memory_limit_mib)
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


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["bnrank.engine.inspect_preload"])  # ignored once the server runs
        return context
    return multiprocessing.get_context("spawn")


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
    context = _context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(send, str(root), max_volume_bytes, memory_limit_mib), daemon=True
    )
    child.start()
    send.close()  # the child holds the only writing end, so its death reads as EOF here
    try:
        if not receive.poll(time_limit_s):
            child.kill()
            raise LimitExceededError(f"checking the dataset took longer than {time_limit_s:g} s and was stopped")
        try:
            reply = receive.recv()
        except (EOFError, OSError):
            child.join(_GRACE_S)
            code = child.exitcode
            if code is not None and code < 0:
                raise LimitExceededError(
                    f"the process checking the dataset was killed by signal {signal.Signals(-code).name}, "
                    f"most likely out of its {memory_limit_mib} MiB memory limit"
                ) from None
            raise DatasetError(f"checking the dataset failed without an answer (exit code {code})") from None
    finally:
        receive.close()
        child.join(_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join()
    if reply[0] == "ok":
        return reply[1]
    _, class_name, message = reply
    cls = getattr(errors, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BNRankError)):
        cls = DatasetError
    raise cls(message)


__all__ = ["CheckedDataset", "check_dataset_isolated", "memory_limit_for"]
