"""No import circles among the project's own modules (bnrank, service, worker), read off the source with ast.

A circle works until someone moves an import, and then fails with a half-initialised module; a layered
package never has one. Every import counts, at module level, inside a function or under ``if
TYPE_CHECKING:`` (deferring an import hides a circle from the interpreter, not from the reader). A
package's ``__init__`` is a module here like any other when it is imported by name (``from a.b import
name``); the parents that importing ``a.b.c`` initialises on the way are not counted, since a package whose
``__init__`` gathers its submodules would otherwise always be a circle with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bnrank", "service", "worker")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: each target, or ``x.module`` for ``from x import module``."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        else:
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            bases, names = [base], [alias.name for alias in node.names]
        for base in bases:
            submodules = {f"{base}.{n}" for n in names if f"{base}.{n}" in modules}
            targets |= submodules
            if not names or len(submodules) < len(names):  # a name defined in the module itself
                targets.add(base)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every strongly connected group of more than one module (Tarjan), as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.add(tuple(sorted(group)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_graph_sees_the_project_and_its_imports() -> None:
    graph = import_graph()
    assert {"bnrank.engine.fitting", "service.core.results", "worker.tasks"} <= set(graph)
    assert "bnrank.engine.recognition" in graph["bnrank.engine.fitting"]
    assert "bnrank.engine.formats.bundle" in graph["bnrank.engine.checkpoints"]  # from package import module
    assert "service.core.results" in graph["worker.ranking"]


def test_circles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == {("a", "b", "c")}
    assert circles({"a": {"b"}, "b": set()}) == set()


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package: str) -> None:
    graph = import_graph()
    found = {c for c in circles(graph) if any(m.split(".")[0] == package for m in c)}
    assert not found, "import circle(s): " + "; ".join(" ↔ ".join(c) for c in sorted(found))
