"""What docker compose would hand a service: its environment, resolved from docker-compose.yml and a .env.

Compose semantics kept here (the ones our compose file uses): ``${VAR}``, ``${VAR:-default}`` (also when
set but empty), ``${VAR-default}`` (only when unset), nested defaults, ``$$`` for a literal ``$``; then
``env_file`` (the whole .env) under ``environment:``, which wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; comments and blank lines skipped; surrounding quotes removed."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _closing(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` that opens at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text.startswith("${", i):
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unclosed ${{ in {text!r}")


def interpolate(text: str, variables: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing(text, i)
            body = text[i + 2 : end]
            if ":-" in body:
                name, default = body.split(":-", 1)
                value = variables.get(name) or interpolate(default, variables)
            elif "-" in body:
                name, default = body.split("-", 1)
                value = variables[name] if name in variables else interpolate(default, variables)
            else:
                value = variables.get(body, "")
            out.append(value)
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service_environment(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """The environment the container of ``service`` starts with, given ``dotenv`` as the project's .env."""
    spec = load_compose()["services"][service]
    env: dict[str, str] = {}
    if spec.get("env_file"):
        env.update(dotenv)
    for key, value in (spec.get("environment") or {}).items():
        env[key] = "" if value is None else interpolate(str(value), dotenv)
    return env
