"""The layers import only downward and no module imports one that imports it back, read from the source with `ast`.

    ui/ (Gradio)  ->  studio/ (settings, service, recording, CLI)  ->  krea2/ (engine)  and  storage/ (history)

Every import counts, wherever it stands: at the top, inside a function, or under `if TYPE_CHECKING:` (a type an
engine module names from storage still ties the engine to the history).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("app", "krea2", "storage", "studio", "ui", "bench", "demo")
# What each layer may import from the project, besides itself.
ALLOWED = {
    "krea2": set(),
    "storage": set(),
    "studio": {"krea2", "storage"},
    "ui": {"studio", "krea2", "storage"},
}
# Circles that another change is removing, each with its reason; the test fails once one is gone, so the entry is
# deleted with it.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def project_modules() -> dict[str, Path]:
    files = [ROOT / "app.py", *(p for top in TOPS[1:] for p in (ROOT / top).rglob("*.py"))]
    modules = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a package's `__init__` counts as the package)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    found = set()
    for target in targets:
        while target and target not in modules:  # `import krea2.manager.x` -> the module krea2.manager
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_the_graph_sees_imports_of_every_kind(graph):
    """The reader finds top-level, relative, function-level and package imports (or the rules below prove nothing)."""
    assert "krea2.manager" in graph["studio.runtime"] and "storage" in graph["studio.service"]  # absolute
    assert "studio.recording" in graph["studio.cli"]  # relative, inside a function
    assert {"krea2.checkpoints", "krea2.request"} <= graph["krea2"]  # a package's __init__
    assert "studio.service" in graph["app"] and len(graph) > 60


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downward(graph, layer):
    project = {name.split(".")[0] for name in graph}
    wrong = {
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.split(".")[0] == layer
        for target in targets
        if target.split(".")[0] not in ALLOWED[layer] | {layer} and target.split(".")[0] in project
    }
    assert not wrong, sorted(wrong)


def test_nothing_imports_the_app(graph):
    assert not [name for name, targets in graph.items() if "app" in targets]


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle_of_three():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back(graph):
    found = {frozenset(component) for component in cycles(graph)}
    assert found - set(KNOWN_CYCLES) == set(), sorted(sorted(c) for c in found - set(KNOWN_CYCLES))
    gone = set(KNOWN_CYCLES) - found
    assert not gone, f"no longer circles, delete them from KNOWN_CYCLES: {sorted(sorted(c) for c in gone)}"
