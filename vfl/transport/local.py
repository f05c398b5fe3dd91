"""An in-process network: every party of a job in one Python process (threads), for tests and simulation.

Messages still go through Arrow IPC serialization, so what a test captures in ``transcript`` is
byte for byte what a networked channel would carry. Each party has a ``Mailbox``, the same store
(idempotent delivery, aborts, notices) a Flight inbox files its messages in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vfl.errors import ConfigError, PeerTimeoutError
from vfl.transport.channel import Channel
from vfl.transport.mailbox import Mailbox


@dataclass(frozen=True)
class CapturedMessage:
    """One message on the in-process network, as bytes, for transcript (privacy) tests."""

    sender: str
    receiver: str
    tag: str
    payload: bytes


class LocalNetwork:
    """The mailboxes of several in-process parties, one per party."""

    def __init__(self, parties: list[str]) -> None:
        if len(set(parties)) != len(parties):
            raise ConfigError(f"party ids must be unique, got {parties}")
        self.parties = list(parties)
        self.transcript: list[CapturedMessage] = []
        self._lock = threading.Lock()
        self._mailboxes = {party: Mailbox() for party in self.parties}

    def channel(self, party: str) -> LocalChannel:
        if party not in self.parties:
            raise ConfigError(f"unknown party '{party}'; this network has {self.parties}")
        return LocalChannel(party, self)

    def abort(self, reason: str) -> None:
        """Wake every waiting party with an error (one party failed, the job cannot go on)."""
        for mailbox in self._mailboxes.values():
            mailbox.abort(reason)

    def _put(self, sender: str, receiver: str, tag: str, payload: bytes) -> None:
        if receiver not in self.parties:
            raise ConfigError(f"unknown peer '{receiver}'; this network has {self.parties}")
        with self._lock:
            self.transcript.append(CapturedMessage(sender, receiver, tag, payload))
        self._mailboxes[receiver].put(sender, tag, payload)  # an abort stops its receiver, as over Flight

    def _take(self, sender: str, receiver: str, tag: str, timeout: float) -> bytes:
        payload = self._mailboxes[receiver].take(sender, tag, timeout)
        if payload is None:
            raise PeerTimeoutError(
                f"party '{sender}' did not send '{tag}' to '{receiver}' within {timeout:g} s; "
                "check that it is running and that every party runs the same job"
            )
        return payload


class LocalChannel(Channel):
    """One party's view of a ``LocalNetwork``."""

    def __init__(self, party: str, network: LocalNetwork) -> None:
        super().__init__(party)
        self.network = network

    @property
    def peers(self) -> list[str]:
        return [p for p in self.network.parties if p != self.party]

    def _send_bytes(self, to: str, tag: str, payload: bytes) -> None:
        self.network._put(self.party, to, tag, payload)

    def _recv_bytes(self, frm: str, tag: str, timeout: float) -> bytes:
        return self.network._take(frm, self.party, tag, timeout)
