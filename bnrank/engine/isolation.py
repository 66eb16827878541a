"""Running one call on a stranger's files in a child process with its own memory and time limits.

Checkpoint inspection (inspect_isolated.py) and dataset checks (data/check_isolated.py) both read bytes a
user sent, which may decompress to gigabytes or trip anything in a parser; a child that can die pays for it
instead of the service. Both share the child's start (a forkserver that has torch loaded already, or spawn
where forkserver does not exist), its address-space limit and the parent's wait: an answer, a timeout, or a
death read as EOF. Imports no torch, so the dataset check can use it without loading torch in the caller.
"""

from __future__ import annotations

import multiprocessing
import resource
import signal
from collections.abc import Callable
from typing import Any

from bnrank.engine.errors import BNRankError

_GRACE_S = 5.0  # for the child to exit once its result is sent


def context() -> multiprocessing.context.BaseContext:
    """A forkserver that has torch loaded already, or spawn where forkserver does not exist."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bnrank.engine.inspect_preload"])  # ignored once the server runs
        return ctx
    return multiprocessing.get_context("spawn")


def _address_space_in_use() -> int:
    """Bytes of address space this process maps now (VmSize), the base the memory limit is added to."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def limit_memory(limit_mib: int) -> None:
    """In the child: address space = what it maps now (torch's libraries, when forked warm) + the limit."""
    limit = _address_space_in_use() + limit_mib * 1024**2
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_isolated(
    target: Callable[..., None],
    args: tuple[Any, ...],
    *,
    time_limit_s: float,
    memory_limit_mib: int,
    limit_error: type[BNRankError],
    failure_error: type[BNRankError],
    doing: str,
    process: str,
    prefix: str = "",
) -> tuple[Any, ...]:
    """Start ``target(send_end, *args)`` in a child and return the one reply it sends.

    Raises ``limit_error`` when the child outlives ``time_limit_s`` or is killed by a signal (most likely its
    memory limit), ``failure_error`` when it exits without an answer. Messages read ``{prefix}{doing} took
    longer …``, ``{prefix}{process} was killed by signal …`` and ``{prefix}{doing} failed without an answer``.
    """
    ctx = context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, args=(send, *args), daemon=True)
    child.start()
    send.close()  # the child holds the only writing end, so its death reads as EOF here
    try:
        if not receive.poll(time_limit_s):
            child.kill()
            raise limit_error(f"{prefix}{doing} took longer than {time_limit_s:g} s and was stopped")
        try:
            return receive.recv()
        except (EOFError, OSError):
            child.join(_GRACE_S)
            code = child.exitcode
            if code is not None and code < 0:  # killed: the kernel's OOM killer, or an abort on bad_alloc
                raise limit_error(
                    f"{prefix}{process} was killed by signal {signal.Signals(-code).name}, "
                    f"most likely out of its {memory_limit_mib} MiB memory limit"
                ) from None
            raise failure_error(f"{prefix}{doing} failed without an answer (exit code {code})") from None
    finally:
        receive.close()
        child.join(_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join()


__all__ = ["context", "limit_memory", "run_isolated"]
