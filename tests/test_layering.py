"""The dependency rule, checked on the source: keisei is a library; learner, workers and
pretrain import keisei and never each other; only keisei/protocol.py touches sockets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "keisei": {"learner", "workers", "pretrain", "rich", "subprocess", "multiprocessing"},
    "learner": {"workers", "pretrain"},
    "workers": {"learner", "pretrain"},
    "pretrain": {"learner", "workers"},
}
SOCKET_MODULES = {"zmq", "socket"}


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    for path in files:
        imports = imported_top_levels(path)
        bad = imports & FORBIDDEN[package]
        if package == "keisei" and path.name != "protocol.py":
            bad |= imports & SOCKET_MODULES
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (a function's imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


def test_no_import_cycle() -> None:
    """No module reaches itself through the project's imports, at the top or in a function."""
    paths = {_module_name(path): path for package in FORBIDDEN
             for path in (ROOT / package).rglob("*.py")}
    graph = {name: _project_imports(path, set(paths)) - {name} for name, path in paths.items()}
    # a package's __init__ re-exporting its own modules is no cycle
    graph = {name: {other for other in imports if not other.startswith(name + ".")}
             for name, imports in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            name, trail = stack.pop()
            for other in graph[name]:
                if other == start:
                    return [*trail, start]
                if other not in seen:
                    seen.add(other)
                    stack.append((other, [*trail, other]))
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name)) is not None]
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)
