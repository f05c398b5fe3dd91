"""The Mailbox both transports file received messages in: first copy wins, aborts, notices, rejections."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from vfl.errors import PeerAbortedError, ProtocolError
from vfl.transport import LocalNetwork
from vfl.transport.channel import ABORT_TAG, NOTICE_PREFIX, Interrupted, encode_table
from vfl.transport.mailbox import MAX_REJECTIONS, Mailbox, Rejection


def test_first_copy_wins_even_after_delivery():
    box = Mailbox()
    assert box.put("host", "t", b"one") is True
    assert box.put("host", "t", b"two") is False
    assert box.take("host", "t", timeout=0) == b"one"
    assert box.put("host", "t", b"three") is False
    assert box.take("host", "t", timeout=0.01) is None
    assert box.put("arbiter", "t", b"other sender") is True  # keyed by (sender, tag)


def test_take_waits_for_a_put_from_another_thread():
    box = Mailbox()
    threading.Timer(0.05, lambda: box.put("host", "late", b"x")).start()
    assert box.take("host", "late", timeout=5) == b"x"


def test_abort_tag_and_abort_wake_a_waiting_take():
    box = Mailbox()
    reason = encode_table(pa.table({"code": ["data"]}))
    threading.Timer(0.05, lambda: box.put("host", ABORT_TAG, reason)).start()
    with pytest.raises(
        PeerAbortedError, match=r"party 'host' stopped the job \(data: its input data failed"
    ) as info:
        box.take("host", "never", timeout=5)
    assert info.value.peer_code == "data"
    box.abort("a second reason")  # the first reason sticks
    with pytest.raises(ProtocolError, match="data"):
        box.take("host", "never", timeout=0)
    # An abort carries a code only: free text (an old peer's, or a forged one) reads as a plain error.
    other = Mailbox()
    other.put("host", ABORT_TAG, encode_table(pa.table({"reason": ["label 'y' of customer 7 is 1"]})))
    with pytest.raises(PeerAbortedError, match=r"\(error: it hit an error; see its log\)$"):
        other.take("host", "never", timeout=0)


def test_a_notice_interrupts_once():
    box = Mailbox()
    tag = f"{NOTICE_PREFIX}resync/abc"
    notice = encode_table(pa.table({"generation": ["2"]}))
    assert box.put("host", tag, notice) is True
    with pytest.raises(Interrupted) as info:
        box.take("host", "lr/e0", timeout=1)
    assert (info.value.notice.sender, info.value.notice.kind, info.value.notice.data) == (
        "host",
        "resync",
        {"generation": "2"},
    )
    assert box.put("host", tag, notice) is False  # a replayed notice interrupts nobody twice
    assert box.take("host", "lr/e0", timeout=0.01) is None


def test_rejections_keep_the_most_recent():
    box = Mailbox()
    for i in range(MAX_REJECTIONS + 5):
        box.reject(Rejection("host", f"t{i}", "bad", float(i)))
    kept = box.rejections()
    assert len(kept) == MAX_REJECTIONS and kept[-1].tag == f"t{MAX_REJECTIONS + 4}"


def test_the_local_network_keeps_one_mailbox_per_party():
    net = LocalNetwork(["guest", "host", "arbiter"])
    assert all(isinstance(box, Mailbox) for box in net._mailboxes.values())
    g, h, a = (net.channel(p) for p in ("guest", "host", "arbiter"))
    g.send("host", "t", pa.table({"v": [1]}))
    g.send("arbiter", "t", pa.table({"v": [2]}))
    assert h.recv("guest", "t", timeout=1)["v"].to_pylist() == [1]
    assert a.recv("guest", "t", timeout=1)["v"].to_pylist() == [2]
    g.notify("host", "resync", {"x": "1"})
    with pytest.raises(Interrupted):
        h.recv("guest", "u", timeout=1)
    a.send("guest", "u", pa.table({"v": [3]}))  # the arbiter was not interrupted: its mailbox is its own
    assert g.recv("arbiter", "u", timeout=1)["v"].to_pylist() == [3]
    # An abort stops its receiver, as over Flight (a party sends it to every other party).
    h.notify_abort(["guest"], "output")
    with pytest.raises(ProtocolError, match=r"party 'host' stopped the job \(output:"):
        g.recv("arbiter", "never", timeout=1)
