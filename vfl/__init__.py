"""vfl: cross-organization vertical federated learning.

Mechanisms live here (crypto, transport, data, metrics); ``vfl.protocols`` holds the message flows
and ``vfl.parties`` the runtimes. The convenience entry points ``vfl.simulate_psi`` and
``vfl.simulate`` run a whole federation in this process; they are resolved lazily from
``vfl.parties`` so that the layering (parties -> protocols -> mechanisms) holds for every import
made at load time.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vfl._layout import checkout_root
from vfl.errors import VflError

_root = checkout_root(Path(__file__).resolve().parent)
if _root is not None:  # running from a checkout: find vfl.parties / vfl.protocols in its top-level folders
    __path__.append(str(_root))  # noqa: F821 - the package's own search path
del _root

__version__ = "0.1.0"

_LAZY = {
    "simulate_psi": "vfl.parties.simulation",
    "simulate": "vfl.parties.simulation",
    "simulate_audience": "vfl.parties.audience_simulation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vfl' has no attribute '{name}'")


__all__ = ["VflError", "__version__", "simulate", "simulate_audience", "simulate_psi"]
