"""The house's layers, checked by an AST walk of ``src/napari_flex3d`` (no module is imported).

    L0  config, conventions, the package ``__init__``
    L1  core: io, ops, mesh, model
    L2  features: reconstruct, training, explore, simulate (and any other sub-package)
    L3  api, cli, __main__
    L4  _napari (the only room that may import Qt, napari, magicgui, superqt or pyqtgraph)

Nothing imports a module of a higher layer, and no set of modules imports itself round in a
circle, counting the imports made inside functions: a lazy import hides an arrow from the
reader but not from this test. Modules stay under ``MAX_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_flex3d"
PACKAGE = "napari_flex3d"
MAX_LINES = 600
LAYERS = {"config": 0, "conventions": 0, "io": 1, "ops": 1, "mesh": 1, "model": 1,
          "api": 3, "cli": 3, "__main__": 3, "_napari": 4}
FEATURES = 2
FRONT_END_ONLY = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "pyqtgraph", "vispy")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], FEATURES) if len(parts) > 1 else 0


def imported(module: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """``(project modules, other top-level packages)`` that ``module`` imports anywhere in its body.

    ``from pkg import sub`` counts as an import of the sub-module ``pkg.sub`` when that is a
    module, else of ``pkg`` itself (the name then comes from the package's ``__init__``).
    """
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    ours, theirs = set(), set()

    def nearest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                targets = [base]
            else:
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target.split(".")[0] == PACKAGE:
                found = nearest(target)
                if found and found != module:
                    ours.add(found)
            elif target:
                theirs.add(target.split(".")[0])
    return ours, theirs


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = all_modules()
    graph, external = {}, {}
    for name, path in modules.items():
        graph[name], external[name] = imported(name, path, modules)
    return graph, external


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative)."""
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
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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


GRAPH, EXTERNAL = import_graph()


def test_the_walk_sees_the_house():
    """The walk must find the rooms and their arrows, or the other tests pass on nothing."""
    assert {"napari_flex3d.api", "napari_flex3d.cli", "napari_flex3d.config"} <= set(GRAPH)
    assert len(GRAPH) > 40
    assert "napari_flex3d.api" in GRAPH["napari_flex3d.cli"]
    assert sum(len(v) for v in GRAPH.values()) > 100


def test_no_import_cycles():
    cycles = strongly_connected(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_nothing_imports_upward():
    upward = sorted(
        f"{a} (L{layer(a)}) imports {b} (L{layer(b)})"
        for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a)
    )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_only_the_front_end_imports_qt_and_napari():
    leaks = sorted(
        f"{m} imports {pkg}" for m, pkgs in EXTERNAL.items() if layer(m) < LAYERS["_napari"]
        for pkg in pkgs if pkg in FRONT_END_ONLY
    )
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_module_size(module):
    path = all_modules()[module]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC.parent)} has {lines} lines (at most {MAX_LINES})"


def test_the_checker_catches_a_cycle_and_an_upward_import():
    """The checks themselves, on a made-up graph."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert layer("napari_flex3d.io.mrc") < layer("napari_flex3d.training.loop") < layer("napari_flex3d.api")
    assert layer("napari_flex3d") == 0 and layer("napari_flex3d._napari._reader") == 4
