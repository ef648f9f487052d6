"""The package's shape, kept: no import circle among proxy/ modules (type-only imports included), and no class
past about 150 lines (docs/architecture.md lists each module's one job)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROXY = Path(__file__).resolve().parent.parent / "proxy"
MAX_CLASS_LINES = 160


def module_name(path: Path) -> str:
    parts = path.relative_to(PROXY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text()) for path in sorted(PROXY.rglob("*.py"))}


def imports_of(tree: ast.Module, known: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "proxy":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & known
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
    return found & known


def test_no_import_circle_among_proxy_modules() -> None:
    trees = modules()
    graph = {name: imports_of(tree, set(trees)) - {name} for name, tree in trees.items()}
    # A package imports its modules to re-export them; a module importing its own package is no circle.
    graph = {name: {d for d in deps if not name.startswith(f"{d}.")} for name, deps in graph.items()}
    circles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        for dependency in sorted(graph[name]):
            if dependency in path:
                circles.append([*path[path.index(dependency) :], dependency])
            elif len(path) < len(graph):
                visit(dependency, [*path, dependency])

    for start in sorted(graph):
        visit(start, [start])
    assert circles == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_class_over_about_150_lines(name: str) -> None:
    long = {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(modules()[name])
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
        if node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    }
    assert long == {}
