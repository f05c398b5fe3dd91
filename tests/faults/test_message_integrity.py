"""Issue 6, integrity: every kind of bad message against real Flight inboxes over loopback mutual TLS.

Each row builds one signed envelope and payload the way an attacker or a broken peer would, delivers
it with the sender's real client (``FlightChannel._deliver``, the retry loop every send uses), and
checks both ends: the sender gets a ``TransportError`` naming the peer and why it refused, and the
receiver's ``recv`` for that tag does NOT return the bad payload (it times out, saying that messages
were refused). Some rows overlap tests/transport/test_flight_channel.py on purpose: this file is the
complete list.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable

import pyarrow as pa
import pytest

from tests.transport.test_flight_channel import FAST, federation, ids, table  # noqa: F401 (fixtures)
from vfl.errors import IntegrityError, PeerTimeoutError, ProtocolError, TransportError
from vfl.transport.channel import encode_table
from vfl.transport.flight import FlightChannel, seal

JOB = "job-1"
TAG = "lr/e3/b0/d"


def _tamper_envelope(command: bytes, **fields: object) -> bytes:
    """Change fields of a signed envelope without re-signing it."""
    outer = json.loads(command)
    env = json.loads(outer["envelope"])
    env.update(fields)
    outer["envelope"] = json.dumps(env, sort_keys=True, separators=(",", ":"))
    return json.dumps(outer).encode()


def _flip_byte(payload: bytes) -> bytes:
    i = len(payload) // 2
    return payload[:i] + bytes([payload[i] ^ 0x01]) + payload[i + 1 :]


# Each row: (sender channel, claimed sender, tag the receiver would wait for, build(ids) -> (command, payload),
# what the sender's error says).
Build = Callable[[dict], tuple[bytes, bytes]]
PAYLOAD = encode_table(table(40))


def truncated(i):  # noqa: ANN001, ANN201
    return seal(i["host"], JOB, "guest", TAG, PAYLOAD), PAYLOAD[: len(PAYLOAD) // 2]


def truncated_to_nothing(i):  # noqa: ANN001, ANN201
    return seal(i["host"], JOB, "guest", TAG, PAYLOAD), b""


def altered_one_bit(i):  # noqa: ANN001, ANN201
    return seal(i["host"], JOB, "guest", TAG, PAYLOAD), _flip_byte(PAYLOAD)


def appended(i):  # noqa: ANN001, ANN201
    return seal(i["host"], JOB, "guest", TAG, PAYLOAD), PAYLOAD + b"\x00" * 16


def swapped_for_another_table(i):  # noqa: ANN001, ANN201
    return seal(i["host"], JOB, "guest", TAG, PAYLOAD), encode_table(table(40, seed=9))


def wrong_job(i):  # noqa: ANN001, ANN201
    return seal(i["host"], "job-0", "guest", TAG, PAYLOAD), PAYLOAD


def wrong_receiver(i):  # noqa: ANN001, ANN201
    return seal(i["host"], JOB, "arbiter", TAG, PAYLOAD), PAYLOAD


def signed_by_another_partys_key(i):  # noqa: ANN001, ANN201
    return seal(dataclasses.replace(i["arbiter"], party_id="host"), JOB, "guest", TAG, PAYLOAD), PAYLOAD


def claims_another_sender(i):  # noqa: ANN001, ANN201
    return seal(dataclasses.replace(i["host"], party_id="arbiter"), JOB, "guest", TAG, PAYLOAD), PAYLOAD


def envelope_tag_rewritten(i):  # noqa: ANN001, ANN201
    command = seal(i["host"], JOB, "guest", "lr/e0/b0/d", PAYLOAD)
    return _tamper_envelope(command, tag=TAG), PAYLOAD


def envelope_job_rewritten(i):  # noqa: ANN001, ANN201
    return _tamper_envelope(seal(i["host"], "job-0", "guest", TAG, PAYLOAD), job_id=JOB), PAYLOAD


def envelope_hash_rewritten(i):  # noqa: ANN001, ANN201
    import hashlib

    bad = _flip_byte(PAYLOAD)
    command = seal(i["host"], JOB, "guest", TAG, PAYLOAD)
    return _tamper_envelope(command, sha256=hashlib.sha256(bad).hexdigest()), bad


def unsigned(i):  # noqa: ANN001, ANN201
    command = seal(i["host"], JOB, "guest", TAG, PAYLOAD)
    outer = json.loads(command)
    outer["signature"] = base64.b64encode(b"").decode()
    return json.dumps(outer).encode(), PAYLOAD


def no_envelope(i):  # noqa: ANN001, ANN201
    return json.dumps({"tag": TAG, "sender": "host"}).encode(), PAYLOAD


ROWS = [
    ("truncated Arrow payload", "host", truncated, r"has \d+ of its \d+ signed bytes; it was truncated"),
    ("payload cut to nothing", "host", truncated_to_nothing, r"has 0 of its \d+ signed bytes; it was truncated"),
    ("one bit altered", "host", altered_one_bit, r"does not match its signed SHA-256; it was altered in transit"),
    ("bytes appended", "host", appended, r"longer than its signed size"),
    ("payload swapped for another table", "host", swapped_for_another_table, r"does not match its signed SHA-256"),
    ("wrong job id", "host", wrong_job, r"belongs to job 'job-0', but 'guest' runs job 'job-1'"),
    ("wrong receiver", "host", wrong_receiver, r"addressed to 'arbiter', not 'guest'"),
    ("signed by another party's key", "host", signed_by_another_partys_key, r"is not signed by the key pinned for 'host'"),
    ("claims another sender", "arbiter", claims_another_sender, r"is not the one pinned for 'arbiter'"),
    ("tag rewritten after signing", "host", envelope_tag_rewritten, r"is not signed by the key pinned for 'host'"),
    ("job id rewritten after signing", "host", envelope_job_rewritten, r"is not signed by the key pinned for 'host'"),
    ("payload and hash rewritten", "host", envelope_hash_rewritten, r"is not signed by the key pinned for 'host'"),
    ("empty signature", "host", unsigned, r"is not signed by the key pinned for 'host'"),
    ("no signed envelope at all", "host", no_envelope, r"carries no valid signed vfl envelope"),
]  # fmt: skip


@pytest.mark.parametrize(("claimed", "build", "match"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_message_is_refused_and_never_received(ids, federation, claimed, build, match):  # noqa: F811
    host, guest = federation["host"], federation["guest"]
    command, payload = build(ids)
    with pytest.raises(TransportError) as info:
        host._deliver("guest", TAG, command, payload)
    message = str(info.value)
    prefix = f"peer 'guest' at {guest.address} refused message '{TAG}': "
    assert message.startswith(prefix) and "\n" not in message, message
    assert re.search(match, message), message
    # The receiver never hands the bad payload to the protocol; its time-out says why nothing came.
    with pytest.raises(PeerTimeoutError) as waited:
        guest.recv(claimed, TAG, timeout=0.3)
    if build is not no_envelope:  # an envelope that cannot be parsed names no sender to blame
        assert f"were refused, the last: {message[len(prefix) :]}" in str(waited.value)
    assert guest.rejections[-1].reason == message[len(prefix) :]
    # A refusal never occupies the slot: the genuine message (if the claimed sender can send it) gets through.
    if claimed == "host":
        host.send("guest", TAG, table(40))
        assert guest.recv("host", TAG, timeout=5).equals(table(40))


def test_replayed_message_is_delivered_once(ids, federation):  # noqa: F811
    """The same signed envelope sent again, before and long after delivery, reaches the protocol once."""
    host, guest = federation["host"], federation["guest"]
    first = encode_table(table(10, seed=1))
    command = seal(ids["host"], JOB, "guest", "lr/e0/b0/d", first)
    host._deliver("guest", "lr/e0/b0/d", command, first)
    host._deliver("guest", "lr/e0/b0/d", command, first)  # a retry before delivery
    assert guest.recv("host", "lr/e0/b0/d", timeout=5).equals(table(10, seed=1))
    for epoch in range(1, 4):  # the job moves on
        host.send("guest", f"lr/e{epoch}/b0/d", table(10, seed=10 + epoch))
        assert guest.recv("host", f"lr/e{epoch}/b0/d", timeout=5).equals(table(10, seed=10 + epoch))
    host._deliver("guest", "lr/e0/b0/d", command, first)  # replay of epoch 0, epochs later: dropped
    with pytest.raises(PeerTimeoutError):
        guest.recv("host", "lr/e0/b0/d", timeout=0.3)
    received = [r.tag for r in guest.log.records if r.direction == "received"]
    assert received.count("lr/e0/b0/d") == 1


def test_replay_from_an_earlier_epoch_cannot_stand_in_for_a_later_step(ids, federation):  # noqa: F811
    """The tag is signed: an epoch-0 message replayed while the receiver waits for epoch 5 fills nothing."""
    host, guest = federation["host"], federation["guest"]
    old = encode_table(table(10, seed=1))
    command = seal(ids["host"], JOB, "guest", "lr/e0/b0/d", old)
    host._deliver("guest", "lr/e0/b0/d", command, old)
    assert guest.recv("host", "lr/e0/b0/d", timeout=5).equals(table(10, seed=1))
    host._deliver("guest", "lr/e5/b0/d", command, old)  # whatever the replayer calls it, it is the e0 message
    with pytest.raises(PeerTimeoutError):
        guest.recv("host", "lr/e5/b0/d", timeout=0.3)


def test_replay_into_another_job_or_to_another_party_is_refused(ids, federation):  # noqa: F811
    """A message recorded in one job is worthless in the next job, and at any other receiver."""
    host, guest, arbiter = federation["host"], federation["guest"], federation["arbiter"]
    payload = encode_table(table(10))
    command = seal(ids["host"], JOB, "guest", "psi/points", payload)
    host._deliver("guest", "psi/points", command, payload)
    assert guest.recv("host", "psi/points", timeout=5).equals(table(10))
    with pytest.raises(TransportError, match="addressed to 'guest', not 'arbiter'"):
        host._deliver("arbiter", "psi/points", command, payload)
    with pytest.raises(PeerTimeoutError):
        arbiter.recv("host", "psi/points", timeout=0.2)
    # The guest starts the next job on a new inbox (same identity, same address book).
    peers = [guest._peers["host"]]
    with FlightChannel(ids["guest"], peers, job_id="job-2", settings=FAST) as next_job:
        replayer = FlightChannel(
            ids["host"],
            [dataclasses.replace(host._peers["guest"], address=next_job.address)],
            job_id="job-2",
            settings=FAST,
        )
        with (
            replayer,
            pytest.raises(TransportError, match="belongs to job 'job-1', but 'guest' runs job 'job-2'"),
        ):
            replayer._deliver("guest", "psi/points", command, payload)
        with pytest.raises(PeerTimeoutError, match="were refused"):
            next_job.recv("host", "psi/points", timeout=0.2)


def test_signed_but_unreadable_arrow_payload_fails_recv_cleanly(ids, federation):  # noqa: F811
    """A peer that signs a truncated Arrow stream (its own bug): the transport delivers the signed bytes,
    and ``recv`` raises an IntegrityError naming the sender and tag instead of returning a table."""
    host, guest = federation["host"], federation["guest"]
    broken = PAYLOAD[: len(PAYLOAD) - 30]
    host._deliver("guest", "lr/e1/b0/d", seal(ids["host"], JOB, "guest", "lr/e1/b0/d", broken), broken)
    with pytest.raises(
        IntegrityError, match=r"message 'lr/e1/b0/d' from 'host' is not a valid Arrow payload"
    ):
        guest.recv("host", "lr/e1/b0/d", timeout=5)
    assert not any(r.tag == "lr/e1/b0/d" for r in guest.log.records)


def test_replayed_notice_interrupts_only_once(ids, federation):  # noqa: F811
    host, guest = federation["host"], federation["guest"]
    tag = "vfl/notice/resync/0123456789abcdef"
    notice = encode_table(pa.table({"epoch": ["3"]}))
    command = seal(ids["host"], JOB, "guest", tag, notice)
    host._deliver("guest", tag, command, notice)
    with pytest.raises(ProtocolError):
        guest.recv("host", "lr/e4/b0/d", timeout=2)  # interrupted by the notice
    host._deliver("guest", tag, command, notice)  # the same notice, replayed
    with pytest.raises(PeerTimeoutError):
        guest.recv("host", "lr/e4/b0/d", timeout=0.3)
