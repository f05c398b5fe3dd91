"""Where ``vfl.parties`` and ``vfl.protocols`` come from (DESIGN.md §3).

An installed vfl has them inside the package (``pip install .`` maps the checkout's top-level
folders ``parties/`` and ``protocols/`` there, see ``pyproject.toml``). Run from a checkout without
installing (the tests, the examples and the benchmarks put the checkout first on ``sys.path``),
the package ``vfl`` is the checkout's folder, which lacks them: then the checkout's root joins the
package path, so ``vfl.parties`` resolves to ``parties/`` as it does when installed.
"""

from __future__ import annotations

from pathlib import Path

SUBPACKAGES = ("parties", "protocols")


def checkout_root(package_dir: Path) -> Path | None:
    """The checkout holding ``package_dir`` (the ``vfl`` folder) when it is a source tree, else None."""
    if all((package_dir / name / "__init__.py").is_file() for name in SUBPACKAGES):
        return None  # installed: the subpackages are inside
    root = package_dir.parent
    if (root / "pyproject.toml").is_file() and all(
        (root / name / "__init__.py").is_file() for name in SUBPACKAGES
    ):
        return root
    return None
