"""Only the ``vfl`` namespace is installed, with every package of the checkout listed in pyproject."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    mapping = {"vfl": ROOT / "vfl", "vfl.parties": ROOT / "parties", "vfl.protocols": ROOT / "protocols"}
    for name, folder in mapping.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_package_is_installed_under_vfl() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert listed == _packages_on_disk()
    assert all(name == "vfl" or name.startswith("vfl.") for name in listed)
    assert config["package-dir"] == {"vfl": "vfl", "vfl.parties": "parties", "vfl.protocols": "protocols"}


def test_subpackages_import_under_vfl() -> None:
    import vfl.parties.runner
    import vfl.protocols.lr

    assert Path(vfl.parties.runner.__file__).parent.name in ("parties",)
    assert Path(vfl.protocols.lr.__file__).parent.name in ("protocols",)
