"""vfl: cross-organization vertical federated learning.

Mechanisms live here (crypto, transport, data, metrics); ``protocols`` holds the message flows and
``parties`` the runtimes. The convenience entry points ``vfl.simulate_psi`` and ``vfl.simulate``
run a whole federation in this process; they are resolved lazily from ``parties`` so that the
package layering (parties -> protocols -> vfl) holds for every import made at load time.
"""

from __future__ import annotations

import importlib
from typing import Any

from vfl.errors import VflError

__version__ = "0.1.0"

_LAZY = {
    "simulate_psi": "parties.simulation",
    "simulate": "parties.simulation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vfl' has no attribute '{name}'")


__all__ = ["VflError", "__version__", "simulate", "simulate_psi"]
