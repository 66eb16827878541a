"""The command-line package's modules import each other in one direction, and the parser loads no torch.

Read off the source with ast rather than by importing: importing any ``bnrank.cli`` module runs the
package's ``__init__`` first, which imports every command module, so a circle would not show as an error.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "bnrank" / "cli"
# What a command module may import at module level from the engine: the option declarations and plain types,
# none of which imports torch. Everything else of the engine (and torch, scipy) is imported by the command
# that runs it.
TORCH_FREE = (
    "bnrank.engine.configs",
    "bnrank.engine.options",
    "bnrank.engine.errors",
    "bnrank.engine.entries",
    "bnrank.engine.threads",
    "bnrank.engine.formats.conversion",  # the conversion report as text: reads a dict (the package is a docstring)
)
ENGINE_RUNTIME = ("bnrank.engine.", "torch", "scipy")
# The modules allowed function-level imports of the service stack (their docstrings say why).
SERVICE_STACK = {"operations": ("service.", "worker.", "sqlalchemy", "uvicorn")}
HEAVY = ("torch", "monai", "scipy", "fastapi", "sqlalchemy", "celery", "uvicorn", "service", "worker")


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


def _deferrable(module: str, target: str) -> bool:
    """A function-level import the layout allows: the engine's runtime anywhere, the service stack where said."""
    if target.startswith(ENGINE_RUNTIME) and not target.startswith(TORCH_FREE):
        return True
    return target.startswith(SERVICE_STACK.get(module, ()) or ("\0",))


def test_imports_are_at_module_level_except_the_engine_runtime_and_the_service_stack() -> None:
    for name, tree in _modules().items():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    deferred = all(_deferrable(name, t) for t in targets)
                    assert deferred, f"bnrank/cli/{name}.py:{node.lineno} imports {targets} inside {func.name}()"


def test_module_level_engine_imports_are_torch_free() -> None:
    for name, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports run for the type checker only
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for target in targets:
                    heavy = target.startswith(("torch", "scipy", "monai")) or (
                        target.startswith("bnrank.engine") and not target.startswith(TORCH_FREE)
                    )
                    assert not heavy, f"bnrank/cli/{name}.py:{node.lineno} imports {target} at module level"


def test_the_command_line_loads_without_torch_or_the_service_stack() -> None:
    """A fresh interpreter builds the whole parser and every command's help without importing torch, the
    service, the worker or their libraries: `bnrank --help` and `bnrank remote ...` start without them."""
    code = (
        "import argparse, sys\n"
        "from bnrank.cli import build_parser\n"
        "parser = build_parser()\n"
        "def helps(p):\n"
        "    p.format_help()\n"
        "    for action in p._actions:\n"
        "        if isinstance(action, argparse._SubParsersAction):\n"
        "            for child in action.choices.values():\n"
        "                helps(child)\n"
        "helps(parser)\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    root = PACKAGE.parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
