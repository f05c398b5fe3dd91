import threading

import pyarrow as pa
import pytest

from vfl.errors import ConfigError, IntegrityError, PeerTimeoutError, ProtocolError
from vfl.transport import LocalNetwork, decode_table, encode_table


def test_roundtrip_and_accounting():
    net = LocalNetwork(["guest", "host"])
    g, h = net.channel("guest"), net.channel("host")
    table = pa.table({"x": [1, 2, 3]})
    g.send("host", "t/1", table)
    got = h.recv("guest", "t/1", timeout=1)
    assert got.equals(table)
    assert g.log.summary()["host"]["sent"]["messages"] == 1
    assert h.log.summary()["guest"]["received"]["bytes"] == len(net.transcript[0].payload)


def test_resend_is_idempotent():
    net = LocalNetwork(["a", "b"])
    a, b = net.channel("a"), net.channel("b")
    a.send("b", "t", pa.table({"v": [1]}))
    a.send("b", "t", pa.table({"v": [2]}))
    assert b.recv("a", "t", timeout=1)["v"].to_pylist() == [1]
    a.send("b", "t", pa.table({"v": [3]}))  # after delivery: still ignored
    with pytest.raises(PeerTimeoutError, match="'a' did not send 't'"):
        b.recv("a", "t", timeout=0.05)


def test_recv_waits_for_sender_thread():
    net = LocalNetwork(["a", "b"])
    a, b = net.channel("a"), net.channel("b")
    threading.Timer(0.05, lambda: a.send("b", "late", pa.table({"v": [7]}))).start()
    assert b.recv("a", "late", timeout=5)["v"].to_pylist() == [7]


def test_abort_wakes_waiters_and_unknown_peer():
    net = LocalNetwork(["a", "b"])
    b = net.channel("b")
    threading.Timer(0.05, lambda: net.abort("party a crashed")).start()
    with pytest.raises(ProtocolError, match="a crashed"):
        b.recv("a", "never", timeout=5)
    with pytest.raises(ConfigError, match="unknown peer 'c'"):
        b.send("c", "x", pa.table({"v": [1]}))


def test_truncated_payload_is_integrity_error():
    payload = encode_table(pa.table({"v": list(range(100))}))
    with pytest.raises(IntegrityError, match="truncated or altered"):
        decode_table(payload[: len(payload) // 2], sender="host", tag="t")
