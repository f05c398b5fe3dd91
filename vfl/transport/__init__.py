"""Transports: the ``Channel`` interface, an in-process network, and Arrow Flight with mTLS (DESIGN.md §10).

Modules: ``channel`` (the interface), ``mailbox`` (received messages, shared by both transports),
``local`` (in-process network), ``address`` (the one ``host:port`` parser), ``tls`` (identities and
pins), ``envelope`` (signed envelopes and chunking), ``retry`` (the send retry policy), ``probe`` (TLS
diagnostics), ``peers`` (``Peer`` and ``FlightSettings``) and ``flight`` (the Flight inbox server and
channel).

Names below load on first use, so ``vfl.transport.address`` (used by configuration code) does not
import pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Channel": "vfl.transport.channel",
    "MessageLog": "vfl.transport.channel",
    "MessageRecord": "vfl.transport.channel",
    "decode_table": "vfl.transport.channel",
    "encode_table": "vfl.transport.channel",
    "CapturedMessage": "vfl.transport.local",
    "LocalChannel": "vfl.transport.local",
    "LocalNetwork": "vfl.transport.local",
}

__all__ = [
    "CapturedMessage",
    "Channel",
    "LocalChannel",
    "LocalNetwork",
    "MessageLog",
    "MessageRecord",
    "decode_table",
    "encode_table",
]

if TYPE_CHECKING:
    from vfl.transport.channel import Channel, MessageLog, MessageRecord, decode_table, encode_table
    from vfl.transport.local import CapturedMessage, LocalChannel, LocalNetwork


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vfl.transport' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
