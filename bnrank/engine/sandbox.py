"""Running untrusted model code in a box: a TorchScript archive converted to ONNX by `torch.jit.load` + export.

A TorchScript archive is a program. BNRank reads its tensors without running it (`formats/torchscript.py`), which
is enough when the tensors match a registered architecture; an architecture BNRank cannot rebuild needs the
program itself, and the only way to get a graph out of it is to let torch load and run it. That happens here,
only where a deployment opts in (``BNRANK_SANDBOX=bwrap``, `configure`), in a child process that:

- runs under bubblewrap (Debian's ``bubblewrap``) in new user, PID, network, IPC, UTS and cgroup namespaces, with
  no network (a fresh namespace has only a down loopback), all capabilities dropped, its own session, and killed
  with its parent;
- sees the host read-only and only in part: ``/usr`` (Python, libraries), the Python installation and the
  ``bnrank`` package, the archive at ``/in/model.pt``; the one writable host path is the output file
  ``/out/model.onnx`` (a tmpfs ``/tmp`` lives and dies with the box);
- has a seccomp filter (written below as a classic BPF program, handed to bubblewrap's ``--seccomp``) that
  answers ``EPERM`` to ``socket``/``socketpair`` (no socket of any family), to ``fork``/``vfork`` and to any
  ``clone`` that is not a thread, ``ENOSYS`` to ``clone3`` (glibc then uses ``clone``), and kills the process on
  a foreign syscall ABI;
- has rlimits: address space (``RLIMIT_AS``: a 100 GB allocation fails), CPU seconds (``RLIMIT_CPU``), the size
  of what it may write (``RLIMIT_FSIZE``), no core dumps; and a wall-clock timeout from the parent.

What comes out is untrusted too: an ONNX file, judged by `formats/onnx_graph.py` like any upload. A failure
becomes a `SandboxError` whose message says which limit or rule stopped the conversion.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

import bnrank
from bnrank.engine.errors import CheckpointError

MODES = ("off", "bwrap")
_MODE = "off"


class SandboxError(CheckpointError):
    """The sandboxed conversion failed or was stopped; the message says why (a limit, a refused syscall, ...)."""


@dataclass(frozen=True)
class Limits:
    """What the boxed process may use. The defaults suit a 30 M-parameter network on a CPU."""

    memory_bytes: int = 6 * 1024**3
    cpu_seconds: int = 120
    wall_seconds: float = 300.0
    output_bytes: int = 2 * 1024**3


def configure(mode: str) -> None:
    """Turn the sandboxed conversion on (``bwrap``) or off for this process (the service reads BNRANK_SANDBOX)."""
    global _MODE
    if mode not in MODES:
        raise ValueError(f"sandbox mode {mode!r}: expected one of {', '.join(MODES)}")
    _MODE = mode


def mode() -> str:
    return _MODE


def enabled() -> bool:
    return _MODE != "off"


def available() -> str | None:
    """None when the sandbox can run here, else why not (no bubblewrap, another CPU architecture)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the seccomp filter is written for x86_64, not {platform.machine()}"
    return None


# ------------------------------------------------------------------------------------------------ seccomp

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_CLONE_THREAD = 0x00010000
_NR = {"socket": 41, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "clone3": 435}
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS = 0x7FFF0000, 0x80000000
_ERRNO = 0x00050000
_EPERM, _ENOSYS = 1, 38


def seccomp_program() -> bytes:
    """The filter as bubblewrap reads it: an array of ``struct sock_filter`` (u16 code, u8 jt, u8 jf, u32 k)."""
    allow, eperm, enosys, kill = 12, 13, 14, 15  # indices of the return instructions; jumps are relative (pc+1+j)
    program = [
        (_LD_W_ABS, 0, 0, 4),
        (_JEQ, 0, kill - 2, _AUDIT_ARCH_X86_64),
        (_LD_W_ABS, 0, 0, 0),
        (_JGE, eperm - 4, 0, _X32_BIT),
        (_JEQ, eperm - 5, 0, _NR["socket"]),
        (_JEQ, eperm - 6, 0, _NR["socketpair"]),
        (_JEQ, eperm - 7, 0, _NR["fork"]),
        (_JEQ, eperm - 8, 0, _NR["vfork"]),
        (_JEQ, enosys - 9, 0, _NR["clone3"]),
        (_JEQ, 0, allow - 10, _NR["clone"]),
        (_LD_W_ABS, 0, 0, 16),
        (_JSET, allow - 12, eperm - 12, _CLONE_THREAD),
        (_RET, 0, 0, _ALLOW),
        (_RET, 0, 0, _ERRNO | _EPERM),
        (_RET, 0, 0, _ERRNO | _ENOSYS),
        (_RET, 0, 0, _KILL_PROCESS),
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


# ------------------------------------------------------------------------------------------------ running


def _read_only_roots() -> list[str]:
    """Host paths the box sees read-only: the system, the Python installation, the bnrank package."""
    roots = ["/usr", sys.prefix, sys.base_prefix, str(Path(bnrank.__file__).resolve().parent)]
    seen: list[str] = []
    for root in roots:
        real = os.path.realpath(root)
        if real not in seen and os.path.isdir(real):
            seen.append(real)
    return seen


def bwrap_command(archive: Path, output: Path, program_fd: int, argv: list[str]) -> list[str]:
    command = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--clearenv", "--setenv", "PATH", "/usr/bin", "--setenv", "HOME", "/tmp", "--setenv", "OMP_NUM_THREADS", "1",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
    ]
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")):
        if os.path.islink(link):
            command += ["--symlink", target, link]
    for root in _read_only_roots():
        command += ["--ro-bind", root, root]
    command += ["--ro-bind", str(archive), "/in/model.pt", "--bind", str(output), "/out/model.onnx"]
    command += ["--seccomp", str(program_fd), "--chdir", "/tmp", "--", *argv]
    return command


def _limit(limits: Limits) -> None:  # runs in the child between fork and exec: async-signal-safe calls only
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _reason(returncode: int, stderr: str, limits: Limits) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1][:300] if lines else ""
    if returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and "CPU" in last):
            return f"it used more than its {limits.cpu_seconds} s of CPU time"
        if sig == signal.SIGXFSZ:
            return f"it wrote more than {limits.output_bytes:,} bytes"
        if sig == signal.SIGSYS:
            return "it made a system call the sandbox forbids"
        return f"it was killed by {signal.Signals(sig).name}" + (f" ({last})" if last else "")
    if "MemoryError" in stderr or "can't allocate memory" in stderr or "std::bad_alloc" in stderr:
        return f"it tried to allocate more than its {limits.memory_bytes / 1024**3:.0f} GiB of memory ({last})"
    return last or f"it exited with status {returncode}"


def run_boxed(
    archive: Path, output: Path, argv: list[str], limits: Limits = Limits(), *, what: str = "the conversion"
) -> None:
    """Run ``argv`` in the box with ``archive`` at /in/model.pt and ``output`` (created here) at /out/model.onnx.

    Raises `SandboxError` with the reason when the process fails, is stopped by a limit, or times out.
    """
    problem = available()
    if problem is not None:
        raise SandboxError(f"the sandbox cannot run here: {problem}")
    output.write_bytes(b"")
    with tempfile.TemporaryFile() as program:
        program.write(seccomp_program())
        program.flush()
        program.seek(0)
        fd = program.fileno()
        command = bwrap_command(archive.resolve(), output.resolve(), fd, argv)
        try:
            done = subprocess.run(
                command, pass_fds=(fd,), capture_output=True, text=True, errors="replace",
                timeout=limits.wall_seconds, preexec_fn=lambda: _limit(limits), stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"{what} ran past its {limits.wall_seconds:.0f} s and was stopped") from None
    if done.returncode != 0:
        raise SandboxError(f"{what} failed in the sandbox: {_reason(done.returncode, done.stderr, limits)}")


def torchscript_to_onnx(archive: Path, output: Path, in_channels: int, limits: Limits = Limits()) -> Path:
    """Convert a TorchScript archive to ONNX in the box (see the module's docstring); returns ``output``."""
    argv = [sys.executable, "-I", "-m", "bnrank.engine.sandbox_child", str(in_channels)]
    run_boxed(archive, output, argv, limits, what=f"converting {archive.name} to ONNX")
    if output.stat().st_size == 0:
        raise SandboxError(f"converting {archive.name} to ONNX wrote nothing")
    return output


_CONVERTED: dict[tuple[str, int, int], Path] = {}
_WORKDIR: Path | None = None


def converted_torchscript(archive: Path, state: Mapping[str, torch.Tensor], limits: Limits = Limits()) -> Path:
    """The archive as ONNX, converted once per process and file version (a ranking loads a candidate for each
    round and its control); the input channels are the first convolution's, read off the archive's tensors."""
    global _WORKDIR
    stat = archive.stat()
    key = (str(archive.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _CONVERTED and _CONVERTED[key].exists():
        return _CONVERTED[key]
    first = next((t for t in state.values() if t.dim() == 5), None)
    if first is None:
        raise SandboxError(f"{archive.name}: no 3D convolution among the archive's tensors to size an input for")
    if _WORKDIR is None:
        _WORKDIR = Path(tempfile.mkdtemp(prefix="bnrank-sandbox-"))
    output = _WORKDIR / f"{len(_CONVERTED)}-{archive.stem[:40]}.onnx"
    _CONVERTED[key] = torchscript_to_onnx(archive, output, int(first.shape[1]), limits)
    return output
