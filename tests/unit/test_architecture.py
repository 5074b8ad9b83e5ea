"""The shape of the package: no module over 400 lines, no import cycle between modules.

Imports are read from the source (``ast``), so imports inside functions and under ``TYPE_CHECKING`` count as
much as top-level ones: a cycle that only works because one side imports lazily is still a cycle. The layers
themselves are import-linter's job (``tests/checks.sh``, ``[tool.importlinter]`` in pyproject.toml).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

MAX_LINES = 400
# where each folder's modules live in the installed package (pyproject.toml [tool.setuptools] package-dir)
ROOTS = {"src/citeline": "citeline", "connectors": "citeline.connectors", "ingest": "citeline.ingest",
         "serving": "citeline.serving"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in ROOTS.items():
        base = REPO / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if folder == "src/citeline" and parts and parts[0] in {"connectors", "ingest", "serving"}:
                continue  # not a real folder there; listed for safety only
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The citeline modules ``name`` imports anywhere in its source (a ``from x import y`` names x.y if a module)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import citeline.a.b` counts as citeline.a.b
                target = target.rpartition(".")[0]
            if target and target != name and target != "citeline":
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_module_is_longer_than_400_lines():
    long = {str(path.relative_to(REPO)): n for path in _modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by responsibility (at most {MAX_LINES} lines each): {long}"


def test_no_import_cycle_counting_lazy_and_type_checking_imports():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the design: drop parent <- child edges
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".") or name == "citeline"}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_reader_counts_lazy_and_type_checking_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from citeline.x import A\n"
                   "def f():\n    import citeline.y.z\n    from . import w\n")
    modules = {"citeline.m": src, "citeline.x": src, "citeline.y.z": src, "citeline.w": src}
    assert _imports("citeline.m", src, modules) == {"citeline.x", "citeline.y.z", "citeline.w"}
