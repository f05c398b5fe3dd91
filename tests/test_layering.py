"""Imports point one way: vfl.cli -> vfl.parties -> vfl.protocols -> the mechanisms in vfl/ (DESIGN.md §3)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level and TYPE_CHECKING imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


ROOMS = {
    "mechanisms": ([p for p in _modules(ROOT / "vfl") if "cli" not in p.relative_to(ROOT / "vfl").parts]),
    "protocols": _modules(ROOT / "protocols"),
    "parties": _modules(ROOT / "parties"),
}
FORBIDDEN = {
    "mechanisms": ("vfl.parties", "vfl.protocols", "vfl.cli", "parties", "protocols"),
    "protocols": ("vfl.parties", "vfl.cli", "parties"),
    "parties": ("vfl.cli",),
}


@pytest.mark.parametrize("room", list(ROOMS))
def test_no_import_points_the_wrong_way(room):
    wrong = []
    for path in ROOMS[room]:
        for module in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[room]):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    # vfl/__init__.py names vfl.parties.simulation as a string for its lazy entry points, not an import.
    assert wrong == []
