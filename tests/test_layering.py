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
