"""FlightChannel over real Flight servers on 127.0.0.1 with real mutual TLS (no mocks)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from vfl.errors import ConfigError, PeerTimeoutError, ProtocolError, TransportError
from vfl.transport.channel import encode_table
from vfl.transport.flight import FlightChannel, FlightSettings, Peer, seal
from vfl.transport.tls import PartyIdentity, create_identity

log = logging.getLogger(__name__)
MiB = 1 << 20
FAST = FlightSettings(
    connect_deadline=2.0, first_contact=2.0, initial_backoff=0.05, max_backoff=0.5, probe_timeout=1.0
)


def free_port() -> int:
    """A port the OS reports free on loopback (never a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ids(tmp_path_factory) -> dict[str, PartyIdentity]:
    d = tmp_path_factory.mktemp("ids")
    return {
        p: create_identity(p, d / f"{p}.key", d / f"{p}.crt") for p in ("guest", "host", "arbiter", "mallory")
    }


def make_peers(ids: dict[str, PartyIdentity], addrs: dict[str, str]) -> list[Peer]:
    return [
        Peer(p, "guest" if p == "guest" else p, addrs[p], ids[p].cert_pem, ids[p].fingerprint) for p in addrs
    ]


@pytest.fixture
def federation(ids):
    """guest, host, arbiter: each with its own inbox, all pinning each other."""
    for attempt in range(5):  # a port seen free can be taken by an outgoing connection before we bind it
        addrs = {p: f"127.0.0.1:{free_port()}" for p in ("guest", "host", "arbiter")}
        peers = make_peers(ids, addrs)
        chans: dict[str, FlightChannel] = {}
        try:
            for p in addrs:
                chans[p] = FlightChannel(ids[p], peers, job_id="job-1", listen=addrs[p], settings=FAST)
            break
        except TransportError:
            for ch in chans.values():
                ch.close()
            if attempt == 4:
                raise
    yield chans
    for ch in chans.values():
        ch.close()


def table(n: int = 5, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(n), "x": rng.normal(size=n)})


def test_round_trip_between_three_parties_in_threads(federation):
    parties = list(federation)
    errors: list[BaseException] = []

    def run(me: str) -> None:
        try:
            ch = federation[me]
            for other in parties:
                if other != me:
                    ch.send(other, f"hello/{me}", table(4 + len(me), seed=len(me)))
            for other in parties:
                if other != me:
                    got = ch.recv(other, f"hello/{other}", timeout=10)
                    assert got.equals(table(4 + len(other), seed=len(other)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    summary = federation["guest"].log.summary()
    assert summary["host"]["sent"]["messages"] == 1 and summary["host"]["received"]["messages"] == 1
    assert summary["arbiter"]["received"]["bytes"] > 0


def test_large_vector_streams_in_batches(federation):
    n = 30_000
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=n * 512, dtype=np.uint8).tobytes()
    t = pa.table({"c": pa.FixedSizeBinaryArray.from_buffers(pa.binary(512), n, [None, pa.py_buffer(data)])})
    start = time.perf_counter()
    federation["guest"].send("host", "lr/e0/b0/enc", t)
    got = federation["host"].recv("guest", "lr/e0/b0/enc", timeout=30)
    elapsed = time.perf_counter() - start
    assert got.equals(t)
    nbytes = federation["host"].log.records[-1].nbytes
    log.warning("30k x 512-byte vector (%.1f MiB) crossed loopback mTLS in %.3f s", nbytes / MiB, elapsed)
    print(f"\n30k x 512-byte vector ({nbytes / MiB:.1f} MiB) crossed loopback mTLS in {elapsed:.3f} s")


def test_resend_is_idempotent_even_after_delivery(federation):
    g, h = federation["guest"], federation["host"]
    g.send("host", "psi/points", table(3, seed=1))
    g.send("host", "psi/points", table(3, seed=2))  # a retry with other content: first copy wins
    assert h.recv("guest", "psi/points", timeout=5).equals(table(3, seed=1))
    g.send("host", "psi/points", table(3, seed=3))  # after delivery: ignored
    with pytest.raises(PeerTimeoutError):
        h.recv("guest", "psi/points", timeout=0.3)
    assert len(g.log.records) == 3  # the sender accounts for every send it made


def test_recv_timeout_names_the_peer_and_address(federation):
    h = federation["host"]
    start = time.monotonic()
    with pytest.raises(
        PeerTimeoutError,
        match=r"party 'guest' at 127\.0\.0\.1:\d+ did not send 'nope' to 'host' within 0\.3 s",
    ):
        h.recv("guest", "nope", timeout=0.3)
    assert time.monotonic() - start < 2


def test_unknown_peer(federation):
    with pytest.raises(ConfigError, match="unknown peer 'bob'"):
        federation["guest"].send("bob", "t", table())


def test_unpinned_client_is_refused(ids, federation):
    """mallory pins the host, but the host's federation does not pin mallory's certificate."""
    host = federation["host"]
    peers = [Peer("host", "host", host.address, ids["host"].cert_pem, ids["host"].fingerprint)]
    with FlightChannel(ids["mallory"], peers, job_id="job-1", settings=FAST) as mal:
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"peer 'host' at .* refused our certificate \(sha256:"):
            mal.send("host", "psi/points", table())
        assert time.monotonic() - start < FAST.connect_deadline  # refused at once, not retried
    assert host.rejections == []  # never got past TLS


def test_party_claiming_another_id_is_refused(ids, federation):
    """The host signs with its own key but claims to be the arbiter: the TLS identity gives it away."""
    host, guest = federation["host"], federation["guest"]
    forged_id = dataclasses.replace(ids["host"], party_id="arbiter")
    payload = encode_table(table())
    command = seal(forged_id, "job-1", "guest", "lr/x", payload)
    with pytest.raises(TransportError, match="not the one pinned for 'arbiter'"):
        host._deliver("guest", "lr/x", command, payload)
    with pytest.raises(PeerTimeoutError, match="were refused"):
        guest.recv("arbiter", "lr/x", timeout=0.2)


def test_message_signed_with_another_partys_key_is_refused(ids, federation):
    """Over the host's own TLS connection, a message claiming the host but signed by the arbiter's key."""
    host = federation["host"]
    wrong_key = dataclasses.replace(ids["arbiter"], party_id="host")
    payload = encode_table(table())
    command = seal(wrong_key, "job-1", "guest", "lr/y", payload)
    with pytest.raises(TransportError, match="not signed by the key pinned for 'host'"):
        host._deliver("guest", "lr/y", command, payload)


def test_unsigned_message_is_refused(federation):
    host = federation["host"]
    with pytest.raises(TransportError, match="no valid signed vfl envelope"):
        host._deliver("guest", "t", b'{"tag": "t"}', b"data")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("altered", "does not match its signed SHA-256"),
        ("truncated", "was truncated"),
        ("extended", "longer than its signed size"),
    ],
)
def test_altered_payload_is_rejected(ids, federation, change, match):
    host, guest = federation["host"], federation["guest"]
    payload = encode_table(table(50))
    command = seal(ids["host"], "job-1", "guest", "lr/e1/g", payload)
    bad = {
        "altered": payload[:-20] + bytes(20),
        "truncated": payload[:-20],
        "extended": payload + b"x",
    }[change]
    with pytest.raises(TransportError, match=match):
        host._deliver("guest", "lr/e1/g", command, bad)
    # The genuine message still gets through afterwards: refusals never occupy the slot.
    host._deliver("guest", "lr/e1/g", command, payload)
    assert guest.recv("host", "lr/e1/g", timeout=5).equals(table(50))


def test_message_for_another_job_or_receiver_is_refused(ids, federation):
    host = federation["host"]
    payload = encode_table(table())
    other_job = seal(ids["host"], "job-0", "guest", "t", payload)
    with pytest.raises(TransportError, match="belongs to job 'job-0', but 'guest' runs job 'job-1'"):
        host._deliver("guest", "t", other_job, payload)
    to_arbiter = seal(ids["host"], "job-1", "arbiter", "t", payload)
    with pytest.raises(TransportError, match="addressed to 'arbiter', not 'guest'"):
        host._deliver("guest", "t", to_arbiter, payload)


def test_server_with_wrong_certificate_is_refused(ids, tmp_path):
    """Someone answers at the host's address with a 'host' certificate that is not the pinned one."""
    impostor = create_identity("host", tmp_path / "k", tmp_path / "c")
    addrs = {"guest": f"127.0.0.1:{free_port()}", "host": f"127.0.0.1:{free_port()}"}
    real_peers = make_peers(ids, addrs)
    fake_peers = [Peer("guest", "guest", addrs["guest"], ids["guest"].cert_pem, ids["guest"].fingerprint)]
    with (
        FlightChannel(ids["guest"], real_peers, job_id="job-1", listen=addrs["guest"], settings=FAST) as g,
        FlightChannel(impostor, fake_peers, job_id="job-1", listen=addrs["host"], settings=FAST) as fake,
    ):
        start = time.monotonic()
        with pytest.raises(
            TransportError, match=r"presented certificate sha256:\w+, but the federation pins"
        ):
            g.send("host", "psi/points", table())
        assert time.monotonic() - start < FAST.connect_deadline
        assert fake.rejections == []
        assert g.probe("host").presented == impostor.fingerprint


def test_peer_down_gives_named_timeout_quickly(ids):
    addrs = {"guest": f"127.0.0.1:{free_port()}", "host": f"127.0.0.1:{free_port()}"}
    settings = dataclasses.replace(FAST, connect_deadline=1.0, first_contact=1.0)
    with FlightChannel(
        ids["guest"], make_peers(ids, addrs), job_id="j", listen=addrs["guest"], settings=settings
    ) as g:
        start = time.monotonic()
        with pytest.raises(TransportError) as info:
            g.send("host", "t", table())
        elapsed = time.monotonic() - start
        msg = str(info.value)
        assert f"peer 'host' at {addrs['host']} did not answer within 1 s (tried " in msg
        assert "check that it is running and listening on that address" in msg
        assert 0.9 < elapsed < 3.0
        status = g.probe("host")
        assert not status.reachable and "not reachable" in status.problem


def test_peer_that_starts_late_is_reached_by_retries(ids):
    addrs = {"guest": f"127.0.0.1:{free_port()}", "host": f"127.0.0.1:{free_port()}"}
    peers = make_peers(ids, addrs)
    settings = dataclasses.replace(FAST, connect_deadline=10.0, max_backoff=0.3)
    with FlightChannel(ids["guest"], peers, job_id="j", listen=addrs["guest"], settings=settings) as g:
        sent = threading.Event()
        failure: list[BaseException] = []

        def send() -> None:
            try:
                g.send("host", "late", table())
                sent.set()
            except BaseException as exc:
                failure.append(exc)

        t = threading.Thread(target=send)
        t.start()
        time.sleep(0.8)
        assert not sent.is_set()
        with FlightChannel(ids["host"], peers, job_id="j", listen=addrs["host"], settings=settings) as h:
            assert h.recv("guest", "late", timeout=8).equals(table())
            t.join(8)
        assert sent.is_set(), failure


def test_message_over_size_limit(ids):
    addrs = {"guest": f"127.0.0.1:{free_port()}", "host": f"127.0.0.1:{free_port()}"}
    peers = make_peers(ids, addrs)
    small = dataclasses.replace(FAST, max_message_bytes=1 * MiB)
    big = dataclasses.replace(FAST, max_message_bytes=64 * MiB, chunk_bytes=256 * 1024)
    t = pa.table({"x": np.zeros(300_000)})  # 2.3 MiB
    with (
        FlightChannel(ids["guest"], peers, job_id="j", listen=addrs["guest"], settings=small) as g,
        FlightChannel(ids["host"], peers, job_id="j", listen=addrs["host"], settings=big) as h,
    ):
        with pytest.raises(
            TransportError,
            match=r"message 'big' to 'host' is 2\.\d MiB, over the 1\.0 MiB message size limit",
        ):
            g.send("host", "big", t)
        assert g.log.records == []  # nothing was sent
        with pytest.raises(
            TransportError,
            match=r"refused message 'big': message 'big' from 'host' is 2\.\d MiB, over the 1\.0 MiB limit of 'guest'",
        ):
            h.send("guest", "big", t)
        h.send("guest", "small", table())
        assert g.recv("host", "small", timeout=5).equals(table())
        g.send("host", "back", t.slice(0, 100_000))  # under both limits, several chunks
        assert h.recv("guest", "back", timeout=5).equals(t.slice(0, 100_000))


def test_port_in_use_names_the_address(ids, federation):
    taken = federation["guest"].address
    peers = make_peers(ids, {"guest": taken, "host": federation["host"].address})
    with pytest.raises(TransportError, match=f"cannot listen on {taken}.*port is in use"):
        FlightChannel(ids["guest"], peers, job_id="job-1", listen=taken)


def test_pinned_fingerprint_must_match_the_certificate(ids):
    peers = [Peer("host", "host", "127.0.0.1:1", ids["host"].cert_pem, ids["arbiter"].fingerprint)]
    with pytest.raises(Exception, match="has fingerprint sha256:.*but the federation pins"):
        FlightChannel(ids["guest"], peers, job_id="j")
    peers = [Peer("host", "host", "127.0.0.1:1", ids["arbiter"].cert_pem, ids["arbiter"].fingerprint)]
    with pytest.raises(Exception, match="pinned for peer 'host' belongs to party 'arbiter'"):
        FlightChannel(ids["guest"], peers, job_id="j")


def test_close_wakes_waiting_recv_and_frees_the_port(ids):
    addr = f"127.0.0.1:{free_port()}"
    peers = make_peers(ids, {"guest": addr, "host": "127.0.0.1:1"})
    ch = FlightChannel(ids["guest"], peers, job_id="j", listen=addr)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            ch.recv("host", "never", timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    ch.close()
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError)
    ch.close()  # twice is fine
    with FlightChannel(ids["guest"], peers, job_id="j", listen=addr) as again:
        assert again.address == addr
