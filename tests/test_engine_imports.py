"""The engine's modules import each other in one direction only: no file imports a file that imports it back, counting
imports inside functions too (a lazy import hides a circle; it does not remove it)."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "krea2"


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The krea2 modules `path` imports anywhere in it (a package's __init__ when it names one)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def test_no_engine_module_imports_one_that_imports_it_back():
    files = {module_name(path): path for path in ENGINE.rglob("*.py")}
    graph = {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph[current])
        return False

    # A package's __init__ re-exporting its own modules is the package's table of contents, not a circle.
    circles = sorted(
        (name, other)
        for name, imports in graph.items()
        for other in imports
        if not name.startswith(other + ".") and reaches(other, name)
    )
    assert not circles, circles
