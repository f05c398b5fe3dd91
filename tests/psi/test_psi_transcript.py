"""Privacy of the PSI transcript: capture every message byte and look for anything id-derived."""

from __future__ import annotations

import hashlib
import random
import threading

import numpy as np
import pytest

from vfl.parties.simulation import run_parties
from vfl.protocols.psi import run_guest, run_host
from vfl.psi import PsiOptions, ScalarMultiplier, SecretScalar, hash_id, hash_ids
from vfl.transport import LocalNetwork, decode_table


def email(rng: random.Random) -> str:
    return f"{rng.getrandbits(48):012x}.kunde@beispiel-straße.de"


@pytest.fixture()
def run(monkeypatch):
    """Run a guest and two hosts, capturing the transcript and each party's secret scalar."""
    rng = random.Random(42)
    shared = [email(rng) for _ in range(60)]
    guest_ids = shared + [email(rng) for _ in range(140)]
    host1_ids = (
        shared + [email(rng) for _ in range(90)] + guest_ids[100:130]
    )  # 30 more shared with the guest only
    host2_ids = shared + [email(rng) for _ in range(50)]
    for ids in (guest_ids, host1_ids, host2_ids):
        rng.shuffle(ids)
    scalars: dict[str, SecretScalar] = {}
    original = SecretScalar.generate.__func__

    def recording(cls):
        scalar = original(cls)
        scalars[threading.current_thread().name.removeprefix("vfl-")] = scalar
        return scalar

    monkeypatch.setattr(SecretScalar, "generate", classmethod(recording))
    net = LocalNetwork(["guest", "host1", "host2"])
    options = PsiOptions()
    results = run_parties(
        net,
        {
            "guest": lambda: run_guest(net.channel("guest"), guest_ids, ["host1", "host2"], options),
            "host1": lambda: run_host(net.channel("host1"), host1_ids, "guest", options),
            "host2": lambda: run_host(net.channel("host2"), host2_ids, "guest", options),
        },
    )
    hello = next(m for m in net.transcript if m.tag == "psi/host1/hello")
    table = decode_table(hello.payload)
    salt = table["salt"][0].as_py()
    return {
        "net": net,
        "results": results,
        "scalars": scalars,
        "salt": salt,
        "ids": {"guest": guest_ids, "host1": host1_ids, "host2": host2_ids},
        "shared": set(shared),
    }


def received_points(net: LocalNetwork, party: str) -> set[bytes]:
    points: set[bytes] = set()
    for message in net.transcript:
        if message.receiver == party:
            table = decode_table(message.payload)
            if "point" in table.column_names:
                points.update(table["point"].to_pylist())
    return points


def multiply(scalar: SecretScalar, ids: list[str], salt: bytes) -> set[bytes]:
    with ScalarMultiplier(workers=1) as mul:
        out = mul.multiply(scalar, hash_ids(ids, salt))
    raw = out.tobytes()
    return {raw[i : i + 32] for i in range(0, len(raw), 32)}


def test_result_is_the_three_way_intersection(run):
    guest, host1, host2 = (run["results"][p] for p in ("guest", "host1", "host2"))
    assert set(guest.ids) == run["shared"]
    assert guest.ids.tolist() == host1.ids.tolist() == host2.ids.tolist()


def test_no_raw_id_or_unsalted_hash_in_any_message(run):
    payloads = [m.payload for m in run["net"].transcript]
    assert payloads and sum(map(len, payloads)) > 10_000
    salt = run["salt"]
    for party_ids in run["ids"].values():
        for x in party_ids:
            raw = x.encode("utf-8")
            forbidden = [
                raw,
                x.encode("utf-16-le"),
                hashlib.sha256(raw).digest(),
                hashlib.sha256(raw).hexdigest().encode(),
                hashlib.sha512(raw).digest(),
                hashlib.sha512(raw).digest()[:32],
                hashlib.sha512(raw).hexdigest().encode(),
                hashlib.sha512(b"vfl/psi/v1" + raw).digest()[:32],  # unsalted H
                hash_id(x, salt),  # even the salted hash never leaves a party
                hash_id(x, salt)[:16],
            ]
            for payload in payloads:
                for pattern in forbidden:
                    assert pattern not in payload, f"{pattern!r} derived from an id appears in a message"


def test_hosts_cannot_test_guest_ids_they_do_not_share(run):
    salt, scalars, ids = run["salt"], run["scalars"], run["ids"]
    for host in ("host1", "host2"):
        got = received_points(run["net"], host)
        # What the host receives is exactly a·H(g): useless without the guest's secret a...
        assert got == multiply(scalars["guest"], ids["guest"], salt)
        # ... and nothing the host can compute itself from a guessed id matches it.
        candidates = ids["guest"] + ids[host]
        assert got.isdisjoint(multiply(scalars[host], candidates, salt))
        assert got.isdisjoint({hash_id(x, salt) for x in candidates})
        # The only non-point messages a host receives: the settings and its own rows of the result.
        kinds = {
            m.tag.split("/")[2] if m.tag.startswith("psi/") else m.tag
            for m in run["net"].transcript
            if m.receiver == host
        }
        assert kinds == {"session/agree", "hello", "guest-points", "result"}
        hello = next(m for m in run["net"].transcript if m.tag == f"psi/{host}/hello")
        assert decode_table(hello.payload).column_names == ["salt", "set_size"]
        result_rows = sum(
            decode_table(m.payload).num_rows
            for m in run["net"].transcript
            if m.receiver == host and "/result/" in m.tag
        )
        assert result_rows == len(run["shared"])  # not the 90 rows host1 shares with the guest alone


def test_guest_cannot_test_host_only_ids(run):
    salt, scalars, ids = run["salt"], run["scalars"], run["ids"]
    got = received_points(run["net"], "guest")
    for host in ("host1", "host2"):
        host_only = [x for x in ids[host] if x not in set(ids["guest"])]
        assert host_only
        assert got.isdisjoint(multiply(scalars["guest"], host_only, salt))
        assert got.isdisjoint({hash_id(x, salt) for x in host_only})


def test_scalars_are_fresh_per_party_and_job(run):
    values = {s.value for s in run["scalars"].values()}
    assert len(values) == 3
    assert all(v not in m.payload for v in values for m in run["net"].transcript)
    assert np.unique([len(v) for v in values]).tolist() == [32]
