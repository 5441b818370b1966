"""The house's layering: no subpackage of dpmammo imports one that imports it back, lazy imports
(inside functions) included; imports under `if TYPE_CHECKING:` are annotations only and left out."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpmammo"


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Every `dpmammo.…` module a file imports at run time, at any depth."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [m for m in found if m.startswith("dpmammo.")]


def import_graph() -> dict[str, set[str]]:
    """Subpackage (or top-level module) of dpmammo → those it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        edges = graph.setdefault(part, set())
        for module in _runtime_imports(ast.parse(path.read_text())):
            target = module.split(".")[1]
            if target != part:
                edges.add(target)
    return graph


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    assert {"gan", "evaluate", "train", "study", "privacy"} <= graph.keys()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if state.get(nxt) is None and (found := cycle_from(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            cycle = cycle_from(node, [])
            assert cycle is None, f"import cycle: {' → '.join(cycle)}"


def test_the_graph_sees_lazy_imports_and_skips_type_checking():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dpmammo.study.config import S\n"
                     "def f():\n    from dpmammo.gan.registry import g\n")
    assert _runtime_imports(tree) == ["dpmammo.gan.registry"]
    assert "evaluate" not in import_graph()["gan"]  # a generator's judge loads through train, not evaluate
