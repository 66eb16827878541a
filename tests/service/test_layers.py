"""The arrows of the layout (docs/layout.md): api → core → engine, worker → core → engine.

Each check imports a package in a fresh interpreter and looks at what came with it, so an import added
anywhere below (even a function-level one run at import time) is seen.
"""

from __future__ import annotations

import json
import subprocess
import sys

CORE = (
    "jobs",
    "jobflow",
    "results",
    "params",
    "checkpoints",
    "datasets",
    "recovery",
    "celery_app",
    "launcher",
    "leaderboard",
    "histograms",
)


def _loaded(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _under(modules: set[str], package: str) -> set[str]:
    return {m for m in modules if m == package or m.startswith(package + ".")}


def test_the_api_never_imports_the_worker() -> None:
    assert _under(_loaded("service.api.app"), "worker") == set()


def test_core_imports_neither_the_api_nor_the_worker() -> None:
    loaded = _loaded(", ".join(f"service.core.{m}" for m in CORE))
    assert _under(loaded, "service.api") == set() and _under(loaded, "worker") == set()
    assert _under(loaded, "fastapi") == set()  # core knows no HTTP: its refusals are service.core.errors


def test_the_engine_imports_nothing_above_it() -> None:
    loaded = _loaded("bnrank.engine.ranking")
    assert _under(loaded, "service") == set() and _under(loaded, "worker") == set()
