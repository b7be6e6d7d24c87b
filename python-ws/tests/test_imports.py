"""python_ws's modules import one another one way only (connection -> hub -> protocol/metrics...,
never back): the module import graph, `if TYPE_CHECKING` imports included, has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python_ws"


def import_graph() -> dict[str, set[str]]:
    """Each module of python_ws (by stem; the package itself is `__init__`) and the modules of
    python_ws it imports anywhere in its source, TYPE_CHECKING blocks and functions included."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for stem in modules:
        edges: set[str] = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{stem}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                name = node.module or ""
                if node.level == 0:  # absolute: only python_ws's own modules count
                    if name != "python_ws" and not name.startswith("python_ws."):
                        continue
                    name = name.removeprefix("python_ws").lstrip(".")
                if name:
                    edges.add(name.split(".")[0])
                else:  # `from . import x`: a submodule, or a name from __init__
                    edges |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("python_ws."):
                        edges.add(alias.name.split(".")[1])
                    elif alias.name == "python_ws":
                        edges.add("__init__")
        graph[stem] = edges - {stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_the_package_imports() -> None:
    graph = import_graph()
    assert "hub" in graph["connection"] and "connection" in graph["routes"]
    assert "__init__" in graph["hub"]  # from . import SERVER_NAME


def test_python_ws_imports_have_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
