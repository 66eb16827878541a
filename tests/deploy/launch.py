"""Run the compose file's entrypoint scripts on this machine, with the environment compose would give them.

What compose would do and this does instead: the ``.env`` is .env.example plus the addresses of the local
PostgreSQL and Redis (set through the same ``BNRANK_DATABASE_URL``/``BNRANK_BROKER_URL``/queue variables an
operator would set); the volumes' mount points (``/var/lib/bnrank/...``, ``/data``) are mapped to folders of
the test; the API listens on a free loopback port instead of the published 8000. Nothing else is changed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from tests.deploy.compose_env import ENV_EXAMPLE, REPO, load_compose, read_env_file, service_environment
from tests.service.conftest import wait_for as service_wait_for

ENTRYPOINTS = REPO / "docker"


def dotenv(**overrides: str) -> dict[str, str]:
    return {**read_env_file(ENV_EXAMPLE), **overrides}


def host_environment(service: str, env_file: Mapping[str, str], mounts: Mapping[str, Path]) -> dict[str, str]:
    """The service's container environment with container paths mapped onto this machine's folders."""
    env = service_environment(service, dict(env_file))
    for key, value in env.items():
        for target, folder in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == target or value.startswith(target + "/"):
                env[key] = str(folder) + value[len(target) :]
                break
    return env


def entrypoint(service: str) -> Path:
    """The script compose starts ``service`` with (its ``entrypoint:``, relative to the image's /app)."""
    [script] = load_compose()["services"][service]["entrypoint"]
    return ENTRYPOINTS / Path(script).name


def process_env(env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """A clean environment: PATH (with this venv's `bnrank` first), HOME, and the service's variables."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    base = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    return {**base, **env, **extra}


class Service:
    """One entrypoint script as a process, with its output in a log file."""

    def __init__(self, service: str, env: Mapping[str, str], log_dir: Path, *args: str) -> None:
        self.name = service
        self.log_path = log_dir / f"{service}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(entrypoint(service)), *args],
            env=process_env(env),
            cwd=log_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._log.flush()

    def stop(self, grace_s: float = 30) -> int | None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode


def run_once(service: str, env: Mapping[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(entrypoint(service)), *args],
        env=process_env(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """The service tests' `wait_for`, where a server that does not answer yet counts as not yet."""
    return service_wait_for(predicate, timeout_s, what, interval_s, retry_on=(httpx.HTTPError,))
