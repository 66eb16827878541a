"""Inspecting an uploaded checkpoint in a child process that has its own memory and time limits.

Every size the engine can foresee is bounded before it is allocated (see formats/ and
architectures/sizing.py), but a checkpoint is a stranger's file read by large C++ libraries, and the next
trick may be one nobody foresaw. So the service does not read it in its own process: a child does, under
``RLIMIT_AS`` (address space) and a wall-clock limit. A file that would take 30 GB or loop forever then
costs the child, which is refused memory or killed; the caller gets a clear error and keeps its latency.

The child is started from a forkserver that has already imported torch and MONAI (``spawn`` where there is
no forkserver), so starting one costs tens of milliseconds, not the seconds an import of torch takes, and
never copies the caller's state (threads, open sockets, locks) the way a plain ``fork`` would.

Nothing here imports the service: the result is a plain, picklable `CheckpointSummary`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import torch

from bnrank.engine import errors, isolation, sandbox
from bnrank.engine.architectures import head_keys
from bnrank.engine.architectures.sizing import DEFAULT_MAX_PARAMETERS
from bnrank.engine.configs.gamma import DEFAULT_THRESHOLD
from bnrank.engine.errors import BNRankError, CheckpointError, InspectionLimitError
from bnrank.engine.fitting import load_checkpoint
from bnrank.engine.formats.limits import DEFAULT_MAX_CHECKPOINT_BYTES
from bnrank.engine.gamma import gamma_stats
from bnrank.engine.norms import has_norm, no_norm_message
from bnrank.engine.recognition import resolve_architecture

# Address space on top of what the child maps at start (torch's libraries alone map a few GiB, most of it
# never resident). Inspecting a checkpoint of B bytes needs about 2·B (the tensors read, the model they are
# copied into) plus some tens of MiB: a 76 MB unet3d file fails at 128 MiB and passes at 192 MiB. So 6 GiB
# admits anything under the default 2 GiB checkpoint limit; a service passes a limit matched to its own.
DEFAULT_MEMORY_LIMIT_MIB = 6144
# A 100 M-parameter checkpoint is read, fitted and summarised in a few seconds on one core.
DEFAULT_TIME_LIMIT_S = 60.0

_OUT_OF_MEMORY_MARKERS = ("can't allocate memory", "not enough memory", "bad_alloc", "cannot allocate memory")


def memory_limit_for(max_bytes: int) -> int:
    """A child memory limit (MiB) for checkpoints up to `max_bytes`: 2.5 × the bytes plus 256 MiB of room.

    From the measurement above (about 2·B plus tens of MiB), with a margin so a genuine file at the size
    limit is never refused for memory.
    """
    return math.ceil(2.5 * max_bytes / 1024**2) + 256


@dataclass(frozen=True)
class CheckpointSummary:
    """What an upload needs to know about a checkpoint, without the model itself.

    `in_channels` / `out_channels` are the checkpoint's own input channels and class count where the
    file or network_def tells them, None where it cannot be told (say an encoder-only file has no head).
    `network_def` is the definition the network was built from: the one declared, or a MONAI bundle's own
    (a caller stores it, so later builds of the candidate and its control need not read the bundle again).
    """

    format: str
    architecture: str
    build_kwargs: dict[str, Any]
    in_channels: int | None
    out_channels: int | None
    n_parameters: int
    n_bn_channels: int
    load_report: dict[str, Any]
    gamma: dict[str, Any]
    network_def: dict[str, Any] | None = None


def _first_conv_in_channels(model: Any) -> int | None:
    """Input channels of the first convolution registered: the network's input layer in every family."""
    for module in model.modules():
        channels = getattr(module, "in_channels", None)
        if isinstance(channels, int) and hasattr(module, "weight") and getattr(module, "kernel_size", None):
            return channels
    return None


def summarise_checkpoint(
    path: str | Path,
    *,
    architecture: str | None = None,
    network_def: Mapping[str, Any] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
    head: str | None = None,
) -> CheckpointSummary:
    """Load the checkpoint as a worker will and summarise it, in this process (the child's work)."""

    model, report = load_checkpoint(
        path,
        architecture=architecture,
        network_def=network_def,
        max_bytes=max_bytes,
        max_parameters=max_parameters,
        head=head,
    )
    if not has_norm(model):  # norm-only evaluation, alchemy and the probe would all refuse it: say so now
        hint = getattr(model, "no_norm_hint", "")  # a converted graph says why it has none (a folded export)
        raise CheckpointError(no_norm_message(report.architecture) + (f". {hint}" if hint else ""))
    gamma = gamma_stats(model, threshold=threshold)
    kwargs = dict(report.build_kwargs)
    if network_def is None and isinstance(report.source.get("network_def"), dict):
        network_def = report.source["network_def"]  # a bundle's own, as load_checkpoint built it
    in_channels = kwargs.get("in_channels")
    if in_channels is None and network_def is not None:
        in_channels = network_def.get("in_channels")
    if not isinstance(in_channels, int):
        in_channels = _first_conv_in_channels(model)
    out_channels: int | None = None
    if network_def is not None and isinstance(network_def.get("out_channels"), int):
        out_channels = network_def["out_channels"]
    elif network_def is None:
        heads = set(head_keys(model, resolve_architecture({}, report.architecture)[0]))
        if heads & set(report.matched):  # the file's head fits a model built with this class count
            out_channels = int(kwargs["out_channels"])
    return CheckpointSummary(
        format=report.format,
        architecture=report.architecture,
        build_kwargs=kwargs,
        in_channels=in_channels,
        out_channels=out_channels,
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_bn_channels=int(gamma["summary"].get("count", 0)),
        load_report=report.to_dict(),
        gamma=gamma,
        network_def=dict(network_def) if network_def is not None else None,
    )


def _failure(exc: BaseException, name: str, memory_limit_mib: int) -> tuple[Any, ...]:
    """The child's answer for an exception: an exhausted limit, an engine refusal, or any other failure."""
    text = str(exc)
    boxed = isinstance(exc, sandbox.SandboxError)  # the box's own limits, reported as the box saw them
    if not boxed and (isinstance(exc, MemoryError) or any(m in text.lower() for m in _OUT_OF_MEMORY_MARKERS)):
        return ("limit", f"{name}: inspection ran out of the {memory_limit_mib} MiB memory limit")
    if isinstance(exc, BNRankError):
        extra = getattr(exc, "report", None)
        return ("error", type(exc).__name__, text, extra.to_dict() if hasattr(extra, "to_dict") else extra)
    # A stranger's file can trip anything in a network constructor: it is still a bad file.
    message = f"{name}: cannot be loaded as a checkpoint ({type(exc).__name__}: {text[:300]})"
    return ("error", "CheckpointError", message, None)


def _child(
    conn: Any, path: str, options: dict[str, Any], memory_limit_mib: int, threads: int, sandbox_mode: str = "off"
) -> None:
    """Runs in the child: limit itself, inspect, send back ("ok", summary) or what `_failure` says."""
    try:
        sandbox.configure(sandbox_mode)  # the child is a fresh process: the parent's mode does not carry over
        torch.set_num_threads(max(1, threads))
        isolation.limit_memory(memory_limit_mib)
        result: tuple[Any, ...] = ("ok", summarise_checkpoint(path, **options))
    except Exception as exc:  # MemoryError included: every failure becomes an answer, none a crash
        result = _failure(exc, Path(path).name, memory_limit_mib)
    try:
        conn.send(result)
    finally:
        conn.close()


def prestart() -> None:
    """Start the forkserver now, so the first inspection does not wait seconds for torch to import there.

    Optional: a service calls it (from a thread) at startup. The server imports in the background; this
    returns once it is launched.
    """
    if isolation.context().get_start_method() == "forkserver":
        forkserver.ensure_running()


def _raise_from_child(reply: tuple[Any, ...]) -> None:
    kind = reply[0]
    if kind == "limit":
        raise InspectionLimitError(reply[1])
    _, class_name, message, extra = reply
    cls = getattr(errors, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BNRankError)):
        cls = CheckpointError
    if cls is errors.ArchitectureMismatchError:
        raise errors.ArchitectureMismatchError(message, report=extra)
    raise cls(message)


def inspect_checkpoint_isolated(
    path: str | Path,
    *,
    architecture: str | None = None,
    network_def: Mapping[str, Any] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
    memory_limit_mib: int = DEFAULT_MEMORY_LIMIT_MIB,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    threads: int = 1,
    sandbox_mode: str | None = None,
    head: str | None = None,
) -> CheckpointSummary:
    """`summarise_checkpoint` in a child process limited to `memory_limit_mib` and `time_limit_s`.

    Raises what the engine raises for a bad file (a BNRankError subclass, message prefixed with the file's
    name, never its full path), or InspectionLimitError when the child ran out of memory or time. Blocking:
    call it from a thread (``run_in_executor``), not on an event loop. As with any multiprocessing child,
    the calling program's main module must guard its entry point with ``if __name__ == "__main__":``.
    """
    path = Path(path)
    options = {
        "architecture": architecture,
        "network_def": dict(network_def) if network_def is not None else None,
        "threshold": threshold,
        "max_bytes": max_bytes,
        "max_parameters": max_parameters,
        "head": head,
    }
    reply = isolation.run_isolated(
        _child,
        (str(path), options, memory_limit_mib, threads, sandbox_mode or sandbox.mode()),
        time_limit_s=time_limit_s,
        memory_limit_mib=memory_limit_mib,
        limit_error=InspectionLimitError,
        failure_error=CheckpointError,
        doing="inspection",
        process="the inspecting process",
        prefix=f"{path.name}: ",
    )
    if reply[0] == "ok":
        return reply[1]
    _raise_from_child(reply)
    raise AssertionError("unreachable")


__all__ = [
    "DEFAULT_MEMORY_LIMIT_MIB",
    "DEFAULT_TIME_LIMIT_S",
    "CheckpointSummary",
    "inspect_checkpoint_isolated",
    "memory_limit_for",
    "prestart",
    "summarise_checkpoint",
]

