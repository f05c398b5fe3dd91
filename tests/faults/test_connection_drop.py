"""Issue 6, connection loss: a TCP proxy between two real FlightChannels drops every connection and refuses
new ones for a while; the sender's retries with back-off must deliver every message exactly once, and a
drop longer than the deadline must end in a clear ``TransportError`` naming the peer and its address.

The proxy only forwards bytes, so mutual TLS still runs end to end between the two channels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from tests.transport.test_flight_channel import ids  # noqa: F401 (fixture)
from vfl.errors import PeerTimeoutError, TransportError
from vfl.transport.flight import FlightChannel, FlightSettings, Peer

SETTINGS = FlightSettings(
    connect_deadline=10.0,
    initial_backoff=0.05,
    max_backoff=0.4,
    call_timeout=5.0,
    probe_timeout=1.0,
    chunk_bytes=64 * 1024,  # several chunks per message, so a drop can land mid-stream
)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0
        self.hang_up = False  # accept, then close at once (a front end whose backend is restarting)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._listen()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut() or close()
            if self.hang_up:
                self._kill(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._kill(s)

    def _kill(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._conns.discard(sock)

    def cut(self) -> None:
        """Stop listening (new connections are refused), then drop every live connection."""
        if self._listener is not None:
            self._kill(self._listener)
            self._listener = None
        with self._lock:
            live = list(self._conns)
        for sock in live:
            self._kill(sock)

    def restore(self) -> None:
        self._listen()

    def close(self) -> None:
        self.cut()


def message(i: int) -> pa.Table:
    rng = np.random.default_rng(i)
    return pa.table({"i": np.full(20_000, i), "x": rng.normal(size=20_000)})  # ~320 KB, 5 chunks


@contextlib.contextmanager
def two_parties_through_a_proxy(ids, settings: FlightSettings):  # noqa: ANN001, F811
    """guest -> proxy -> host: the guest's card for the host points at the proxy."""
    host_port = _free_port()
    host_addr = f"127.0.0.1:{host_port}"
    proxy = TcpProxy(("127.0.0.1", host_port))
    guest_addr = f"127.0.0.1:{_free_port()}"
    at_guest = [
        Peer("guest", "guest", guest_addr, ids["guest"].cert_pem, ids["guest"].fingerprint),
        Peer("host", "host", proxy.address, ids["host"].cert_pem, ids["host"].fingerprint),
    ]
    at_host = [
        Peer("guest", "guest", guest_addr, ids["guest"].cert_pem, ids["guest"].fingerprint),
        Peer("host", "host", host_addr, ids["host"].cert_pem, ids["host"].fingerprint),
    ]
    try:
        with (
            FlightChannel(ids["guest"], at_guest, job_id="j", listen=guest_addr, settings=settings) as g,
            FlightChannel(ids["host"], at_host, job_id="j", listen=host_addr, settings=settings) as h,
        ):
            yield g, h, proxy
    finally:
        proxy.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_second_outage_mid_sequence_loses_and_duplicates_nothing(ids):  # noqa: F811
    n = 24
    with two_parties_through_a_proxy(ids, SETTINGS) as (guest, host, proxy):
        sent: list[int] = []
        failures: list[BaseException] = []

        def sender() -> None:
            try:
                for i in range(n):
                    guest.send("host", f"seq/{i}", message(i))
                    sent.append(i)
                    time.sleep(0.05)
            except BaseException as exc:  # surfaced below
                failures.append(exc)

        thread = threading.Thread(target=sender)
        thread.start()
        for i in range(6):  # let the sequence get going through the proxy
            assert host.recv("guest", f"seq/{i}", timeout=10).equals(message(i))
        cut_at = len(sent)
        proxy.cut()
        time.sleep(2.0)
        during = len(sent)
        proxy.restore()
        for i in range(6, n):
            assert host.recv("guest", f"seq/{i}", timeout=15).equals(message(i)), i
        thread.join(15)
        assert not failures, failures
        assert sent == list(range(n))
        assert during - cut_at <= 1, "messages went through while the link was down"
        assert proxy.accepted >= 2, "the sender never reconnected"
        # Exactly once: every tag was received once, and nothing more is waiting.
        received = [r.tag for r in host.log.records if r.direction == "received"]
        assert received == [f"seq/{i}" for i in range(n)]
        with pytest.raises(PeerTimeoutError):
            host.recv("guest", "seq/3", timeout=0.2)
        assert host.rejections == []


def test_outage_longer_than_the_deadline_names_the_peer_and_address(ids):  # noqa: F811
    settings = dataclasses.replace(SETTINGS, connect_deadline=1.5)
    with two_parties_through_a_proxy(ids, settings) as (guest, host, proxy):
        guest.send("host", "before", message(0))
        assert host.recv("guest", "before", timeout=5).equals(message(0))
        proxy.cut()
        start = time.monotonic()
        with pytest.raises(TransportError) as info:
            guest.send("host", "during", message(1))
        elapsed = time.monotonic() - start
        text = str(info.value)
        assert text.startswith(f"peer 'host' at {proxy.address} did not answer within 1.5 s (tried "), text
        assert "check that it is running and listening on that address" in text
        assert 1.4 < elapsed < 5.0, elapsed
        with pytest.raises(PeerTimeoutError):
            host.recv("guest", "during", timeout=0.2)
        proxy.restore()  # the link comes back: the channel recovers for the next message
        guest.send("host", "after", message(2))
        assert host.recv("guest", "after", timeout=5).equals(message(2))


def test_outage_behind_a_front_end_that_accepts_and_hangs_up_is_retried(ids):  # noqa: F811
    """Connections are accepted and closed at once (no TLS alert) for 2 s: transient, not a certificate problem."""
    with two_parties_through_a_proxy(ids, SETTINGS) as (guest, host, proxy):
        guest.send("host", "before", message(0))
        assert host.recv("guest", "before", timeout=5).equals(message(0))
        proxy.hang_up = True
        proxy.cut()
        proxy.restore()
        threading.Timer(2.0, lambda: setattr(proxy, "hang_up", False)).start()
        start = time.monotonic()
        guest.send("host", "during", message(1))
        assert time.monotonic() - start > 1.5
        assert host.recv("guest", "during", timeout=5).equals(message(1))
        with pytest.raises(PeerTimeoutError):
            host.recv("guest", "during", timeout=0.2)
