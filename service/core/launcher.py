"""Starting, supervising and stopping the worker (and a whole `bnrank serve`) as child processes.

Used by `bnrank serve` (the embedded worker beside the API), `bnrank demo`, the tests and the benchmark,
so all of them start processes the same way: the child gets the parent's settings as ``BNRANK_*``
variables, its own process group (so stopping it also stops Celery's pool children), and a clean stop is
tried before a kill.

A worker started here follows its parent: it asks the kernel for SIGTERM when the parent dies
(`follow_parent`, called by worker/celery_app.py), so a killed `bnrank serve` leaves no worker consuming
jobs behind it. `SupervisedWorker` is the embedded worker of `bnrank serve`: restarted with backoff when
it dies, and its state reported by ``/readyz``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from service.core.config import Settings

READY_FILE_ENV = "BNRANK_WORKER_READY_FILE"  # launcher handshake, not a setting: touched when the worker is up
PARENT_PID_ENV = "BNRANK_WORKER_PARENT_PID"  # launcher handshake: the process whose death ends the worker
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def follow_parent() -> None:
    """In a worker the launcher started: receive SIGTERM when the launcher dies (Linux), or exit now if it
    already has. Celery's warm shutdown on SIGTERM stops consuming and finishes the task in hand."""
    expected = os.environ.get(PARENT_PID_ENV, "")
    if not expected.isdigit():
        return
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(expected):  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def worker_command(settings: Settings, loglevel: str | None = None) -> list[str]:
    """``celery worker`` with this worker's queues and concurrency, which follow its GPUs (service.core.queues)."""
    from service.core.queues import gpu_count, worker_concurrency, worker_queues

    gpus = gpu_count(settings)
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--queues",
        ",".join(worker_queues(settings, gpus)),
        "--concurrency",
        str(worker_concurrency(settings, gpus)),
        "--pool",
        settings.worker_pool,
        "--loglevel",
        loglevel or settings.log_level,
        "--hostname",
        f"bnrank-{secrets.token_hex(4)}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.embedded_broker:
        command.append("--without-heartbeat")
    return command


def child_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment with every setting spelled out, so the child cannot read other values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNRANK_")}
    env.update(settings.to_env())
    env.update(extra or {})
    return env


def stop(process: subprocess.Popen, grace_s: float = 15.0) -> int | None:
    """SIGTERM (Celery: finish the running task, give back the rest), then SIGKILL the whole group."""
    if process.poll() is not None:
        return process.returncode
    try:
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=10)


class WorkerProcess:
    """A Celery worker child; `wait_ready` returns once it consumes from the queue."""

    def __init__(self, settings: Settings, *, log: IO[bytes] | None = None, loglevel: str | None = None) -> None:
        settings.ensure_folders()
        self.ready_file = settings.home / f"worker-{secrets.token_hex(6)}.ready"
        self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            worker_command(settings, loglevel),
            env=child_env(settings, {READY_FILE_ENV: str(self.ready_file), PARENT_PID_ENV: str(os.getpid())}),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with status {self.process.returncode} while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker was not ready after {timeout_s:.0f}s")
            time.sleep(0.1)

    def stop(self, grace_s: float = 15.0) -> int | None:
        try:
            return stop(self.process, grace_s)
        finally:
            self.ready_file.unlink(missing_ok=True)


class SupervisedWorker:
    """The embedded worker of `bnrank serve`: started, watched from a thread, restarted with backoff.

    A worker that dies (killed, out of memory, a crash) is started again after 1, 2, 4 … up to
    ``max_backoff_s`` seconds; the backoff starts over once a worker stayed up for ``stable_s``. `state`
    is what ``/readyz`` reports: ``ok`` while a worker runs, else why not (the API then answers 503, so a
    load balancer or an operator sees that queued jobs would not be run).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log: IO[bytes] | None = None,
        max_backoff_s: float = 60.0,
        stable_s: float = 60.0,
        poll_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.log = log
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.restarts = 0
        self.worker: WorkerProcess | None = None
        self._state = "starting"
        self._stopping = threading.Event()
        # The thread that starts every worker: the kernel's parent-death signal follows the creating thread,
        # so one long-lived thread creates them all.
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    @property
    def state(self) -> str:
        return self._state

    def start(self) -> SupervisedWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self.worker = WorkerProcess(self.settings, log=self.log)
                self._state = "ok"
                while self.worker.process.poll() is None and not self._stopping.is_set():
                    self._stopping.wait(self.poll_s)
            except OSError as exc:
                self._state = f"cannot start the worker: {exc}"
            if self._stopping.is_set():
                return
            code = self.worker.process.returncode if self.worker is not None else None
            if self.worker is not None:
                # Celery's pool children share the dead worker's process group: take them down too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.worker.process.pid, signal.SIGKILL)
                self.worker.stop(0)  # reaps nothing more; removes its ready file
            if time.monotonic() - started >= self.stable_s:
                backoff = 1.0
            self.restarts += 1
            self._state = f"the worker exited (status {code}); restart {self.restarts} in {backoff:.0f} s"
            print(f"bnrank serve: {self._state}", file=sys.stderr, flush=True)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def stop(self, grace_s: float = 15.0) -> None:
        self._stopping.set()
        self._thread.join(timeout=self.poll_s * 4 + 5)
        if self.worker is not None:
            self.worker.stop(grace_s)
        self._state = "stopped"


class ServeProcess:
    """`bnrank serve` as a child (API + its worker), for the demo and the benchmark."""

    def __init__(self, settings: Settings, *, log_path: Path, extra_args: list[str] | None = None) -> None:
        self.settings = settings
        self.url = f"http://{settings.api_host}:{settings.api_port}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bnrank.cli", "serve", *(extra_args or [])],
            env=child_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"`bnrank serve` exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service was not ready after {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 30.0) -> int | None:
        try:
            return stop(self.process, grace_s)
        finally:
            self._log.close()
