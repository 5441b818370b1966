"""The house's layering: no subpackage of dpmammo imports one that imports it back, lazy imports
(inside functions) included; imports under `if TYPE_CHECKING:` are annotations only and left out
there. No module imports one that imports it back either, TYPE_CHECKING imports included: a
circle that only annotations close is still two modules that cannot be read one after the other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpmammo"


def _runtime_imports(tree: ast.AST, *, type_checking: bool = False) -> list[str]:
    """Every `dpmammo.…` module a file imports at run time (with `type_checking`, also under `if
    TYPE_CHECKING:`), at any depth. `from package import name` counts as the package."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if (not type_checking and isinstance(node, ast.If)
                and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"):
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


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """Module of dpmammo → the dpmammo modules it imports, TYPE_CHECKING and lazy imports included
    (`from dpmammo.audit import stats` is an edge to the module dpmammo.audit.stats)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):  # every depth, TYPE_CHECKING blocks included
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                edges.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                             for a in node.names)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
        edges.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path whose last node repeats an earlier one, or None."""
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
        if state.get(node) is None and (cycle := cycle_from(node, [])):
            return cycle
    return None


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    assert {"gan", "evaluate", "train", "study", "privacy"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' → '.join(cycle)}"


def test_no_import_cycle_between_modules_type_checking_included():
    graph = module_graph()
    assert "dpmammo.study.conditions" in graph["dpmammo.study.config"]
    assert "dpmammo.study.config" in graph["dpmammo.study.recipes"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' → '.join(cycle)}"


def test_the_module_graph_counts_type_checking_imports():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dpmammo.study.config import S\n")
    assert _runtime_imports(tree, type_checking=True) == ["dpmammo.study.config"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_the_graph_sees_lazy_imports_and_skips_type_checking():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dpmammo.study.config import S\n"
                     "def f():\n    from dpmammo.gan.registry import g\n")
    assert _runtime_imports(tree) == ["dpmammo.gan.registry"]
    assert "evaluate" not in import_graph()["gan"]  # a generator's judge loads through train, not evaluate
