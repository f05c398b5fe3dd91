"""The store of messages a party has received, shared by the Flight inbox and the in-process network.

Messages are keyed by ``(sender, tag)``. Tags are deterministic per job step, so delivery is
idempotent: the first copy of a key wins, and later copies, even after ``take`` consumed the
message, are dropped (``put`` returns False). That is what makes retrying a send whose
acknowledgement was lost safe.

Two reserved tags do not queue: ``vfl/abort`` aborts the mailbox (every waiting and later ``take``
fails with ``ProtocolError`` naming the reason), and ``vfl/notice/...`` interrupts the current
``take`` with ``Interrupted``. Refused messages are kept as ``Rejection`` records for diagnostics.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vfl.errors import PeerAbortedError, describe_abort
from vfl.transport.channel import ABORT_TAG, NOTICE_PREFIX, Interrupted, Notice, abort_code_of, parse_notice

MAX_REJECTIONS = 100


@dataclass(frozen=True)
class Rejection:
    """A message this party's inbox refused, kept for diagnostics and time-out messages."""

    claimed_sender: str
    tag: str
    reason: str
    at: float


class Mailbox:
    """Thread-safe store of received payloads keyed by (sender, tag); the first copy wins."""

    def __init__(self) -> None:
        self._boxes: dict[tuple[str, str], bytes] = {}
        self._delivered: set[tuple[str, str]] = set()
        self._rejections: list[Rejection] = []
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._failure_code: str | None = None
        self._notices: list[Notice] = []

    def put(self, sender: str, tag: str, payload: bytes) -> bool:
        """Store a message; False if a copy was already stored or delivered (the resend is dropped)."""
        key = (sender, tag)
        if tag == ABORT_TAG:
            code = abort_code_of(sender, payload)
            self.abort(describe_abort(sender, code), code)
            return True
        if tag.startswith(NOTICE_PREFIX):
            with self._cond:
                if key in self._delivered:
                    return False  # a replayed notice interrupts nobody twice
                self._delivered.add(key)
                self._notices.append(parse_notice(sender, tag, payload))
                self._cond.notify_all()
            return True
        with self._cond:
            if key in self._boxes or key in self._delivered:
                return False
            self._boxes[key] = payload
            self._cond.notify_all()
            return True

    def reject(self, rejection: Rejection) -> None:
        """Remember a refused message (the most recent ``MAX_REJECTIONS`` are kept)."""
        with self._cond:
            self._rejections.append(rejection)
            del self._rejections[:-MAX_REJECTIONS]

    def rejections(self) -> list[Rejection]:
        with self._cond:
            return list(self._rejections)

    def abort(self, reason: str, code: str | None = None) -> None:
        """Fail every waiting and later ``take`` with ``reason`` (the first reason sticks).

        ``code`` is the reason code a peer's abort carried (None when this party gave up itself).
        """
        with self._cond:
            if self._failure is None:
                self._failure, self._failure_code = reason, code
            self._cond.notify_all()

    def take(self, sender: str, tag: str, timeout: float) -> bytes | None:
        """The payload, or None after ``timeout`` s.

        Raises ``Interrupted`` if a notice arrived and ``ProtocolError`` if the mailbox was aborted.
        """
        key = (sender, tag)
        with self._cond:
            self._cond.wait_for(
                lambda: key in self._boxes or self._failure is not None or bool(self._notices),
                timeout=timeout,
            )
            if self._notices:
                raise Interrupted(self._notices.pop(0))
            if key in self._boxes:
                self._delivered.add(key)
                return self._boxes.pop(key)
            if self._failure is not None:
                raise PeerAbortedError(self._failure, self._failure_code)
            return None
