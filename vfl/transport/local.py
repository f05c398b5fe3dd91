"""An in-process network: every party of a job in one Python process (threads), for tests and simulation.

Messages still go through Arrow IPC serialization, so what a test captures in ``transcript`` is
byte for byte what a networked channel would carry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vfl.errors import ConfigError, PeerTimeoutError, ProtocolError
from vfl.transport.channel import (
    ABORT_TAG,
    NOTICE_PREFIX,
    Channel,
    Interrupted,
    Notice,
    abort_reason,
    parse_notice,
)


@dataclass(frozen=True)
class CapturedMessage:
    """One message on the in-process network, as bytes, for transcript (privacy) tests."""

    sender: str
    receiver: str
    tag: str
    payload: bytes


class LocalNetwork:
    """A mailbox shared by the channels of several in-process parties."""

    def __init__(self, parties: list[str]) -> None:
        if len(set(parties)) != len(parties):
            raise ConfigError(f"party ids must be unique, got {parties}")
        self.parties = list(parties)
        self.transcript: list[CapturedMessage] = []
        self._boxes: dict[tuple[str, str, str], bytes] = {}
        self._delivered: set[tuple[str, str, str]] = set()
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._notices: dict[str, list[Notice]] = {}

    def channel(self, party: str) -> LocalChannel:
        if party not in self.parties:
            raise ConfigError(f"unknown party '{party}'; this network has {self.parties}")
        return LocalChannel(party, self)

    def abort(self, reason: str) -> None:
        """Wake every waiting party with an error (one party failed, the job cannot go on)."""
        with self._cond:
            if self._failure is None:
                self._failure = reason
            self._cond.notify_all()

    def _put(self, sender: str, receiver: str, tag: str, payload: bytes) -> None:
        if receiver not in self.parties:
            raise ConfigError(f"unknown peer '{receiver}'; this network has {self.parties}")
        key = (sender, receiver, tag)
        with self._cond:
            self.transcript.append(CapturedMessage(sender, receiver, tag, payload))
        if tag == ABORT_TAG:
            self.abort(abort_reason(sender, payload))
            return
        if tag.startswith(NOTICE_PREFIX):
            with self._cond:
                if key not in self._delivered:
                    self._delivered.add(key)
                    self._notices.setdefault(receiver, []).append(parse_notice(sender, tag, payload))
                    self._cond.notify_all()
            return
        with self._cond:
            # Deterministic tags make resends idempotent: the first copy wins.
            if key in self._boxes or key in self._delivered:
                return
            self._boxes[key] = payload
            self._cond.notify_all()

    def _take(self, sender: str, receiver: str, tag: str, timeout: float) -> bytes:
        key = (sender, receiver, tag)
        with self._cond:
            notices = self._notices.setdefault(receiver, [])
            ok = self._cond.wait_for(
                lambda: key in self._boxes or self._failure is not None or bool(notices), timeout=timeout
            )
            if notices:
                raise Interrupted(notices.pop(0))
            if key in self._boxes:
                self._delivered.add(key)
                return self._boxes.pop(key)
            if self._failure is not None:
                raise ProtocolError(f"the job was aborted: {self._failure}")
            assert not ok
            raise PeerTimeoutError(
                f"party '{sender}' did not send '{tag}' to '{receiver}' within {timeout:g} s; "
                "check that it is running and that every party runs the same job"
            )


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
