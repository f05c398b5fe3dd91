"""The guest encrypts when its rows are the cheaper ones (DESIGN.md §13): two rows a plaintext under its own
key, one slot per host row in the host's PSI order; exactness against pandas, both directions, odd row counts;
what the decryptor sees of each masked row-half."""

from __future__ import annotations

import numpy as np
import pytest

import vfl
from tests.audience.conftest import audience_options
from tests.audience.test_exactness import _check, _expected
from tests.audience.test_transcript import assert_no_raw_values
from vfl.analytics.crosstab import Layout
from vfl.crypto import generate_keypair
from vfl.crypto.arrow import table_ciphertexts
from vfl.protocols.catalog import ALL_PROTOCOLS, find
from vfl.transport import decode_table

WIDE = ["income_band", "products_held"]  # 5 x 9 bank cells: its rows cost more than the retailer's


@pytest.fixture(scope="module")
def guest_keypair():
    return generate_keypair(1024)


def _options(hosts=("bank",), **extra):
    options = audience_options(hosts, **extra)
    options["segments"]["bank"] = WIDE
    return options


def _messages(result):
    names = {}
    for m in result.network.transcript:
        found = find(ALL_PROTOCOLS, m.tag)
        assert found is not None, m.tag
        names.setdefault(found[1].name, []).append(m)
    return names


def _run(market, keys, hosts, off=None):
    r = market["retailer"].iloc[:1401]  # odd row counts at every party
    frames = {"bank": market["bank"].iloc[103:], "publisher": market["publisher"].iloc[101:]}
    frames = {h: frames[h] for h in hosts}
    off = ("retailer", *hosts) if off is None else off  # the test hook: whose noise share is switched off
    result = vfl.simulate_audience(
        r, frames, id="id", guest_name="retailer", keypairs=keys, workers=1, _noise_off_for_tests=off,
        **_options(hosts),
    )  # fmt: skip
    return r, frames, result


def test_guest_encrypts_exactly_one_host(market, host_keypairs, guest_keypair):
    keys = {**host_keypairs, "retailer": guest_keypair}
    r, frames, result = _run(market, keys, ("bank",))
    names = _messages(result)
    assert "audience.guest-rows" in names and "audience.rows" not in names and "audience.reply" not in names
    b = frames["bank"]
    assert len(b) % 2 == 1 and len(r.merge(b, on="id")) % 2 == 1
    want = _expected(r, b, "age_band", WIDE, ["spend", "balance"])
    _check(result.crosstabs["bank"], want, "age_band", WIDE, ["spend", "balance"], 0.3)
    _check(result.hosts["bank"].crosstabs["retailer"], want, "age_band", WIDE, ["spend", "balance"], 0.3)
    # one ciphertext per two host rows (all of them, in its PSI order), under the guest's key
    rows = [
        c for m in names["audience.guest-rows"] for c in decode_table(m.payload)["ciphertext"].to_pylist()
    ]
    assert len(rows) == (len(b) + 1) // 2 and len(set(rows)) == len(rows)
    keys_sent = [m for m in names["session.public-key"] if m.sender == "retailer"]
    assert len(keys_sent) == 1 and keys_sent[0].receiver == "bank"
    assert_no_raw_values(result.network.transcript, (("retailer", "spend", r), ("bank", "balance", b)))
    # the host sends back as many ciphertexts as accumulators (two halves each: per host cell, not per row)
    (sealed,) = names["audience.guest-sealed"]
    layout = _layout(names, "bank")
    assert decode_table(sealed.payload).num_rows == layout.accumulators == 2 * len(layout.accumulator_specs())
    assert layout.guest_cells == 45 and layout.host_cells == 6  # written from the folding party's side


def test_two_hosts_one_in_each_direction(market, host_keypairs, guest_keypair):
    keys = {**host_keypairs, "retailer": guest_keypair}
    r, frames, result = _run(market, keys, ("bank", "publisher"))
    names = _messages(result)
    assert {m.receiver for m in names["audience.guest-rows"]} == {"bank"}
    assert {m.sender for m in names["audience.rows"]} == {"publisher"}  # two rows a plaintext
    p = frames["publisher"]
    layout = _layout(names, "publisher")
    assert layout.pair_bits and len(_ciphertexts(names, "audience.rows")) == (len(p) + 1) // 2
    assert len(p) % 2 == 1 and len(r.merge(p, on="id")) % 2 == 1
    _check(result.crosstabs["bank"], _expected(r, frames["bank"], "age_band", WIDE, ["spend", "balance"]),
           "age_band", WIDE, ["spend", "balance"], 0.3)  # fmt: skip
    _check(result.crosstabs["publisher"],
           _expected(r, p, "age_band", "interest_segment", ["spend", "page_visits"]),
           "age_band", "interest_segment", ["spend", "page_visits"])  # fmt: skip


def _layout(names, host):
    import json

    (msg,) = [m for m in names["audience.layout"] if m.sender == host]
    return Layout.from_dict(json.loads(decode_table(msg.payload)["layout"][0].as_py()))


def _ciphertexts(names, name, public_key=None):
    if public_key is None:
        return [c for m in names[name] for c in decode_table(m.payload)["ciphertext"].to_pylist()]
    return [c for m in names[name] for c in table_ciphertexts(decode_table(m.payload), public_key, name)]


def test_the_decryptor_sees_only_the_sum_of_each_pair_of_halves(market, host_keypairs, guest_keypair):
    """Noise off at both parties, the same data twice: the guest decrypts the same sums, but each row-half's
    kept bits and every discarded bit differ between the runs (uniform masks that cancel in the pair's sum,
    statistical masks over the other rows' half); no half alone is the true partial sum."""
    keys = {**host_keypairs, "retailer": guest_keypair}
    pk, sk = guest_keypair
    views = []
    for _ in range(2):
        _, _, result = _run(market, keys, ("bank",))
        names = _messages(result)
        layout = _layout(names, "bank")
        specs = layout.sealed_specs()
        plain = [int(p) for p in sk.decrypt_raw(_ciphertexts(names, "audience.guest-sealed", pk))]
        assert len(plain) == len(specs) == 2 * len(layout.accumulator_specs())
        kept = [(p >> s.shift) & ((1 << s.kept_bits) - 1) for p, s in zip(plain, specs, strict=True)]
        below = [p & ((1 << s.shift) - 1) for p, s in zip(plain, specs, strict=True)]
        above = [p >> (s.shift + s.kept_bits) for p, s in zip(plain, specs, strict=True)]
        for p, s in zip(plain, specs, strict=True):
            assert p >> (s.shift + s.kept_bits) >= 1 << s.high_bits  # the mask offset above the kept bits
            if s.shift:
                assert p & ((1 << s.shift) - 1) >= 1 << s.low_bits  # ... and below them (the other half)
        half = len(specs) // 2
        sums = [
            (a + b) % (1 << s.kept_bits)
            for a, b, s in zip(kept[:half], kept[half:], specs[:half], strict=True)
        ]
        views.append((kept, below, above, sums))
    (k1, b1, a1, s1), (k2, b2, a2, s2) = views
    assert s1 == s2  # the noised (here exact) sums are all the decryptor gets
    assert all(x != y for x, y in zip(k1, k2, strict=True))
    assert all(x != y for x, y in zip(a1, a2, strict=True))
    assert all(x != y for x, y in zip(b1[half:], b2[half:], strict=True))
    assert sum(x == y for x, y in zip(k1, s1 + s1, strict=True)) == 0  # no half is the pair's sum


def test_each_view_holds_noise_the_other_party_added(market, host_keypairs, guest_keypair):
    """The guest decrypts the sums with the host's noise share in them, and the host receives the release
    with the guest's: with one party's share switched off, what it sees still differs from the truth."""
    keys = {**host_keypairs, "retailer": guest_keypair}

    def shown(off):
        _, _, result = _run(market, keys, ("bank",), off=off)
        return result.hosts["bank"].crosstabs["retailer"]["count"].to_numpy(dtype=float)

    exact = shown(("retailer", "bank"))
    for off in (("retailer",), ("bank",)):
        seen = shown(off)
        both = ~np.isnan(exact) & ~np.isnan(seen)
        assert both.sum() > 50 and (seen[both] != exact[both]).mean() > 0.3
