"""The ``Channel`` interface every protocol speaks, and the message accounting behind the ledger.

A protocol only ever calls ``send(to, tag, table)`` and ``recv(frm, tag, timeout)``. Tags are
deterministic per job step (``"psi/guest-points"``, ``"lr/e3/b7/d"``), so a resent message
replaces nothing and a resumed party can ask again for what it missed. Payloads are Arrow
tables; on the wire they are Arrow IPC streams.
"""

from __future__ import annotations

import abc
import secrets
import threading
from dataclasses import dataclass, field

import pyarrow as pa

from vfl.errors import ABORT_CODES, IntegrityError, ProtocolError, describe_abort

DEFAULT_TIMEOUT = 600.0
# Reserved: a peer that cannot go on says why, and every recv at the receiver fails fast.
ABORT_TAG = "vfl/abort"
# Reserved: out-of-band notices (a peer restarted) that interrupt a waiting recv.
NOTICE_PREFIX = "vfl/notice/"


@dataclass(frozen=True)
class Notice:
    """An out-of-band message that interrupts whatever the receiver is waiting for (e.g. "resync")."""

    sender: str
    kind: str
    data: dict[str, str]


class Interrupted(ProtocolError):
    """A ``recv`` was interrupted by a notice from a peer; protocols that can recover catch it."""

    def __init__(self, notice: Notice) -> None:
        super().__init__(
            f"party '{notice.sender}' sent a '{notice.kind}' notice while we were waiting for it"
        )
        self.notice = notice


def parse_notice(sender: str, tag: str, payload: bytes) -> Notice:
    """The notice carried under a reserved ``vfl/notice/<kind>/<nonce>`` tag."""
    kind = tag[len(NOTICE_PREFIX) :].split("/", 1)[0]
    table = decode_table(payload, sender=sender, tag=tag)
    data = {name: str(table[name][0].as_py()) for name in table.column_names}
    return Notice(sender, kind, data)


def abort_code_of(sender: str, payload: bytes) -> str:
    """The reason code an abort message carries (``vfl.errors.ABORT_CODES``; anything else reads as "error").

    An abort carries a reason code only, never the sender's error text, which may describe its data.
    """
    try:
        code = str(decode_table(payload, sender=sender, tag=ABORT_TAG)["code"][0].as_py())
    except Exception:  # noqa: BLE001 - an unreadable abort is still an abort
        code = "error"
    return code if code in ABORT_CODES else "error"


def abort_reason(sender: str, payload: bytes) -> str:
    """What an abort message tells its receiver: who stopped, and the public meaning of its code."""
    return describe_abort(sender, abort_code_of(sender, payload))


def encode_table(table: pa.Table) -> bytes:
    """Serialize a table to Arrow IPC stream bytes (what crosses the wire)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_table(payload: bytes, *, sender: str = "?", tag: str = "?") -> pa.Table:
    """Parse Arrow IPC stream bytes; a truncated or corrupted payload is an ``IntegrityError``."""
    try:
        with pa.ipc.open_stream(pa.BufferReader(payload)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as exc:
        raise IntegrityError(
            f"message '{tag}' from '{sender}' is not a valid Arrow payload ({exc}); it was truncated or altered in transit"
        ) from exc


@dataclass(frozen=True)
class MessageRecord:
    """One message as seen by one party: which way, with whom, under which tag, how big."""

    direction: str  # "sent" or "received"
    peer: str
    tag: str
    nbytes: int
    rows: int
    columns: tuple[str, ...]


@dataclass
class MessageLog:
    """Every message a party sent or received, for the leakage ledger (DESIGN.md §9)."""

    records: list[MessageRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, record: MessageRecord) -> None:
        with self._lock:
            self.records.append(record)

    def prepend(self, earlier: list[MessageRecord]) -> None:
        """Records of an earlier process of the same party and job (restored from its saved state)."""
        with self._lock:
            self.records[:0] = earlier

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{peer: {"sent"|"received": {"messages": n, "bytes": b}}}``."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        with self._lock:
            for r in self.records:
                slot = out.setdefault(r.peer, {}).setdefault(r.direction, {"messages": 0, "bytes": 0})
                slot["messages"] += 1
                slot["bytes"] += r.nbytes
        return out


class Channel(abc.ABC):
    """A party's connection to the other parties of one job."""

    def __init__(self, party: str) -> None:
        self.party = party
        self.log = MessageLog()

    @abc.abstractmethod
    def _send_bytes(self, to: str, tag: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    def _recv_bytes(self, frm: str, tag: str, timeout: float) -> bytes: ...

    def send(self, to: str, tag: str, table: pa.Table) -> None:
        """Send ``table`` to party ``to`` under ``tag``."""
        payload = encode_table(table)
        self._send_bytes(to, tag, payload)
        self.log.add(MessageRecord("sent", to, tag, len(payload), table.num_rows, tuple(table.column_names)))

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> pa.Table:
        """Wait for the message ``tag`` from party ``frm``; raise ``PeerTimeoutError`` after ``timeout`` s."""
        payload = self._recv_bytes(frm, tag, DEFAULT_TIMEOUT if timeout is None else timeout)
        table = decode_table(payload, sender=frm, tag=tag)
        self.log.add(
            MessageRecord("received", frm, tag, len(payload), table.num_rows, tuple(table.column_names))
        )
        return table

    def notify(self, peer: str, kind: str, data: dict[str, str]) -> None:
        """Send a notice that interrupts ``peer``'s current ``recv`` with ``Interrupted``."""
        table = pa.table({k: [v] for k, v in data.items()} or {"_": [""]})
        self._send_bytes(peer, f"{NOTICE_PREFIX}{kind}/{secrets.token_hex(8)}", encode_table(table))

    def notify_abort(self, peers: list[str], code: str) -> None:
        """Tell ``peers`` that this party cannot go on, so they stop waiting (best effort, never raises).

        ``code`` is one of ``vfl.errors.ABORT_CODES``: the only thing the peers learn of the failure.
        """
        if code not in ABORT_CODES:
            code = "error"
        table = pa.table({"code": [code]})
        for peer in peers:
            if peer == self.party:
                continue
            try:
                self._send_best_effort(peer, ABORT_TAG, encode_table(table))
            except Exception:  # noqa: BLE001 - the peer may be the one that is down
                continue

    def _send_best_effort(self, to: str, tag: str, payload: bytes) -> None:
        """Send without long retries (transports with retries override this)."""
        self._send_bytes(to, tag, payload)

    def close(self) -> None:
        """Release network resources (nothing to do for in-process channels)."""
        return None
