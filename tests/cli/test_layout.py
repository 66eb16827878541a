"""The command-line package's modules import each other in one direction, at module level.

Read off the source with ast rather than by importing: importing any ``bnrank.cli`` module runs the
package's ``__init__`` first, which imports every command module, so a circle would not show as an error.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "bnrank" / "cli"
# The modules allowed function-level imports, and of what (their docstrings say why): the service stack.
DEFERRING = {"operations": ("service.", "worker.", "sqlalchemy", "uvicorn"), "remote": ("service.core.results",)}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _cli_imports(node: ast.AST) -> set[str]:
    """The bnrank.cli modules one import statement names (``__init__`` for the package itself)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "bnrank.cli":
                found.add("__init__")
            elif alias.name.startswith("bnrank.cli."):
                found.add(alias.name.split(".")[2])
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "bnrank.cli":
            submodules = {p.stem for p in PACKAGE.glob("*.py")}
            names = {a.name for a in node.names}
            found |= names & submodules
            if names - submodules:
                found.add("__init__")
        elif node.module.startswith("bnrank.cli."):
            found.add(node.module.split(".")[2])
    return found


def _graph() -> dict[str, set[str]]:
    return {name: set().union(*(_cli_imports(n) for n in ast.walk(tree))) - {name} for name, tree in _modules().items()}


def test_no_import_circle() -> None:
    graph = _graph()
    assert {"__init__", "options", "local", "alchemy", "operations", "remote", "client"} <= set(graph)
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import circle: " + " → ".join((*path, name))
        if name in done:
            return
        for target in graph[name]:
            visit(target, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    # only the package's entry points import the package itself
    assert {name for name, targets in graph.items() if "__init__" in targets} <= {"__main__"}
    assert graph["client"] == set(), "the HTTP client stands alone"


def test_imports_are_at_module_level_except_the_deferred_service_stack() -> None:
    for name, tree in _modules().items():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    allowed = DEFERRING.get(name)
                    deferred = allowed is not None and all(t.startswith(allowed) for t in targets)
                    assert deferred, f"bnrank/cli/{name}.py:{node.lineno} imports {targets} inside {func.name}()"


def test_the_command_line_loads_without_the_service_stack() -> None:
    """A fresh interpreter builds the whole parser without importing the service, worker or their libraries."""
    code = (
        "import sys\n"
        "from bnrank.cli import build_parser\n"
        "build_parser()\n"
        "stack = ('fastapi', 'sqlalchemy', 'celery', 'uvicorn', 'service', 'worker')\n"
        "loaded = [m for m in stack if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    root = PACKAGE.parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
