"""The crypto package's module graph is a DAG, and ``keys`` (key material) knows no ciphertext module.

Every ``vfl/crypto/*.py`` is parsed with ``ast``; *every* import counts -- module level, inside
functions, and under ``if TYPE_CHECKING:`` -- because a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vfl.crypto

PACKAGE = "vfl.crypto"
CRYPTO_DIR = Path(vfl.crypto.__file__).parent
CIPHERTEXT_MODULES = {"vector", "packing", "multiexp", "randomness", "pool"}


def _imports(path: Path) -> set[str]:
    """Crypto modules (short names) that ``path`` imports anywhere in its body."""
    found: set[str] = set()
    modules = {p.stem for p in CRYPTO_DIR.glob("*.py")}  # includes __init__ (it imports everything)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.split(".")[2])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = node.module.split(".")[0] if node.module else None
                names = [base] if base else [a.name for a in node.names]
            elif node.module == PACKAGE:
                names = [a.name for a in node.names]
                if any(n not in modules for n in names):  # a re-exported name: depends on __init__
                    names.append("__init__")
            elif node.module and node.module.startswith(PACKAGE + "."):
                names = [node.module.split(".")[2]]
            else:
                continue
            found.update(n for n in names if n in modules)
    return found - {path.stem}


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in sorted(CRYPTO_DIR.glob("*.py"))}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path of module names, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_parser_sees_lazy_and_type_checking_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from vfl.crypto.pool import WorkerPool\n"
        "def f():\n    from vfl.crypto.vector import encrypt\n    import vfl.crypto.packing\n"
        "from vfl.crypto import _kernels\n"
        "from vfl.crypto import EncryptedVector\n"
    )
    assert _imports(sample) == {"pool", "vector", "packing", "_kernels", "__init__"}
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_crypto_modules_form_a_dag():
    graph = _graph()
    assert {"keys", "vector", "packing", "randomness", "pool", "multiexp"} <= graph["__init__"]
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle among vfl.crypto modules: {' -> '.join(cycle)}"


def test_keys_imports_no_ciphertext_module():
    bad = _imports(CRYPTO_DIR / "keys.py") & (CIPHERTEXT_MODULES | {"__init__"})
    assert not bad, f"vfl/crypto/keys.py imports ciphertext modules {sorted(bad)} (even lazily or for typing)"
