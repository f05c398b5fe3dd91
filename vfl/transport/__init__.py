"""Transports: the ``Channel`` interface, an in-process network, and (later) Arrow Flight with mTLS."""

from vfl.transport.channel import Channel, MessageLog, MessageRecord, decode_table, encode_table
from vfl.transport.local import CapturedMessage, LocalChannel, LocalNetwork

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
