"""First contact and refused pins, between real FlightChannels on 127.0.0.1 with real mutual TLS.

* Until a peer has answered once, a send waits ``first_contact`` for it to start (logging progress);
  afterwards an unreachable peer gets only ``connect_deadline``.
* A peer whose pins disagree with ours fails at once with an error that names the refused pin, on
  the side that sends, and a receive that waits for such a peer says why it hears nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest

from tests.transport.test_flight_channel import FAST, free_port, ids, make_peers, table  # noqa: F401
from vfl.errors import PeerTimeoutError, TransportError
from vfl.transport import flight
from vfl.transport.flight import FlightChannel, Peer
from vfl.transport.tls import create_identity


def two_addresses() -> dict[str, str]:
    return {"guest": f"127.0.0.1:{free_port()}", "host": f"127.0.0.1:{free_port()}"}


def test_peer_that_starts_late_is_reached_within_the_first_contact_window(ids):  # noqa: F811
    addrs = two_addresses()
    peers = make_peers(ids, addrs)
    # The connect deadline alone (0.5 s) would give up long before the host starts (2 s).
    settings = dataclasses.replace(FAST, connect_deadline=0.5, first_contact=15.0, max_backoff=0.3)
    with FlightChannel(ids["guest"], peers, job_id="j", listen=addrs["guest"], settings=settings) as g:
        done: list[float] = []
        failure: list[BaseException] = []

        def send() -> None:
            start = time.monotonic()
            try:
                g.send("host", "hello", table())
                done.append(time.monotonic() - start)
            except BaseException as exc:  # surfaced below
                failure.append(exc)

        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(2.0)
        assert not done and not failure, failure
        with FlightChannel(ids["host"], peers, job_id="j", listen=addrs["host"], settings=settings) as h:
            assert h.recv("guest", "hello", timeout=10).equals(table())
            thread.join(10)
        assert not failure, failure
        assert done and done[0] >= 2.0
        # It answered once: from now on an unreachable host gets only the short connect deadline.
        start = time.monotonic()
        with pytest.raises(TransportError) as info:
            g.send("host", "again", table())
        assert time.monotonic() - start < 3.0
        assert f"peer 'host' at {addrs['host']} did not answer within 0.5 s (tried " in str(info.value)
        assert "not answered once" not in str(info.value)


def test_peer_that_never_starts_fails_after_the_window_with_one_line(ids, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(flight, "PROGRESS_EVERY", 0.5)
    addrs = two_addresses()
    settings = dataclasses.replace(FAST, connect_deadline=0.3, first_contact=2.0, max_backoff=0.2)
    with FlightChannel(
        ids["guest"], make_peers(ids, addrs), job_id="j", listen=addrs["guest"], settings=settings
    ) as g:
        caplog.set_level(logging.INFO, logger="vfl.transport.flight")
        start = time.monotonic()
        with pytest.raises(TransportError) as info:
            g.send("host", "hello", table())
        elapsed = time.monotonic() - start
    text = str(info.value)
    assert 1.9 < elapsed < 4.0, elapsed
    assert "\n" not in text
    assert text.startswith(f"peer 'host' at {addrs['host']} did not answer within 2 s (tried "), text
    assert "it has not answered once since 'guest' started" in text
    assert text.endswith("check that it is running and listening on that address")
    progress = [r.getMessage() for r in caplog.records if "to start (" in r.getMessage()]
    assert progress, caplog.text
    assert all(m.startswith(f"waiting for party 'host' at {addrs['host']} to start (") for m in progress)
    assert progress[-1].endswith(" of 2 s)")
    assert 2 <= len(progress) <= 5  # about every PROGRESS_EVERY seconds, not every attempt
    # Before first contact each failed attempt is logged at DEBUG only: the progress line says it all.
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "attempt" in r.getMessage()]


def stale(ids, who: str, tmp_path) -> Peer:  # noqa: F811
    """A pin for ``who`` made from an older certificate of the same party (before it re-ran 'vfl init')."""
    old = create_identity(who, tmp_path / f"{who}-old.key", tmp_path / f"{who}-old.crt")
    return Peer(who, who, "", old.cert_pem, old.fingerprint)


@pytest.mark.parametrize("wrong_side", ["sender", "receiver"])
def test_a_refused_pin_is_reported_as_such_not_as_a_time_out(ids, tmp_path, wrong_side):  # noqa: F811
    """guest sends to host; one of them pins a stale certificate of the other."""
    addrs = two_addresses()
    good = make_peers(ids, addrs)
    if wrong_side == "sender":  # the guest pins an old certificate of the host
        bad = stale(ids, "host", tmp_path)
        guest_peers = [good[0], dataclasses.replace(bad, address=addrs["host"])]
        host_peers = good
    else:  # the host pins an old certificate of the guest
        bad = stale(ids, "guest", tmp_path)
        guest_peers = good
        host_peers = [dataclasses.replace(bad, address=addrs["guest"]), good[1]]
    # A long first-contact window: a refused pin must not be waited out like a peer that is not up yet.
    settings = dataclasses.replace(FAST, first_contact=30.0, connect_deadline=30.0)
    with (
        FlightChannel(ids["guest"], guest_peers, job_id="j", listen=addrs["guest"], settings=settings) as g,
        FlightChannel(ids["host"], host_peers, job_id="j", listen=addrs["host"], settings=settings) as h,
    ):
        start = time.monotonic()
        with pytest.raises(TransportError) as info:
            g.send("host", "psi/points", table())
        assert time.monotonic() - start < 5.0
        sent_error = str(info.value)
        assert not isinstance(info.value, PeerTimeoutError)
        assert "did not answer" not in sent_error
        where = f"peer 'host' at {addrs['host']}"
        if wrong_side == "sender":
            assert sent_error.startswith(
                f"{where} presented certificate {ids['host'].fingerprint}, but the federation pins "
                f"{bad.fingerprint} for it"
            ), sent_error
        else:
            assert sent_error.startswith(
                f"{where} refused our certificate ({ids['guest'].fingerprint}); check that its federation "
                "file pins that fingerprint for 'guest'"
            ), sent_error
        assert h.rejections == []  # the handshake failed inside gRPC: nothing ever reached vfl

        # The receiving side hears nothing; its time-out says why instead of only "did not send".
        with pytest.raises(PeerTimeoutError) as waited:
            h.recv("guest", "psi/points", timeout=0.3)
        text = str(waited.value)
        assert text.startswith(
            f"party 'guest' at {addrs['guest']} did not send 'psi/points' to 'host' within 0.3 s"
        )
        if wrong_side == "sender":
            assert f"and it cannot: peer 'guest' at {addrs['guest']} refused our certificate" in text, text
        else:
            assert (
                f"presented certificate {ids['guest'].fingerprint}, but the federation pins {bad.fingerprint}"
                in text
            )


def test_a_silent_peer_with_matching_pins_times_out_as_before(ids):  # noqa: F811
    addrs = two_addresses()
    peers = make_peers(ids, addrs)
    with (
        FlightChannel(ids["guest"], peers, job_id="j", listen=addrs["guest"], settings=FAST),
        FlightChannel(ids["host"], peers, job_id="j", listen=addrs["host"], settings=FAST) as h,
    ):
        with pytest.raises(PeerTimeoutError) as info:
            h.recv("guest", "nothing", timeout=0.2)
        assert str(info.value).endswith("check that it is running and that every party runs the same job")
