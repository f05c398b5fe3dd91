"""Two rows a plaintext (DESIGN.md §13 *pairs*) and the choice of direction, on the mechanisms alone:
exact against the clear computation, odd row counts, each metric placement, both kinds of masks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from vfl.analytics import crosstab as ct
from vfl.analytics.dp import AudienceOptions
from vfl.analytics.plan import GUEST, HOST, oriented, plan
from vfl.crypto import generate_keypair
from vfl.errors import ProtocolError
from vfl.protocols.audience import _guest_plan


@pytest.fixture(scope="module")
def keys():
    return generate_keypair(1024)


def _options(metrics, max_categories=8):
    bounds = {"gm": (0.0, 10.0), "hm": (-5.0, 5.0)}
    return AudienceOptions(
        epsilon=1.0, k=2, segments={"G": ("gs",), "H": ("hs",)}, metrics=metrics,
        bounds={m: bounds[m] for ms in metrics.values() for m in ms}, max_categories=max_categories, fraction_bits=4,
    )  # fmt: skip


def _data(n, seed=1):
    rng = np.random.default_rng(seed)
    g, h = rng.integers(0, 3, n), rng.integers(0, 4, n)
    g[rng.random(n) < 0.2] = -1  # rows the folding party leaves out
    return g, h, pd.DataFrame({"gm": rng.uniform(0, 10, n)}), pd.DataFrame({"hm": rng.uniform(-5, 5, n)})


CASES = {"both": {"G": ("gm",), "H": ("hm",)}, "guest": {"G": ("gm",)}, "host": {"H": ("hm",)}, "none": {}}


@pytest.mark.parametrize("metrics", list(CASES))
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("pair", [True, False])
def test_paired_rows_fold_to_the_exact_table(keys, metrics, uniform, pair):
    pk, sk = keys
    n = 301  # odd: the last plaintext holds one row
    g, h, gm, hm = _data(n)
    layout = ct.make_layout(
        _options(CASES[metrics]), guest="G", host="H", guest_categories={"gs": (0, 1, 2)},
        host_categories={"hs": (0, 1, 2, 3)}, rows=int((g >= 0).sum()), key_bits=1024, pair=pair,
    )  # fmt: skip
    assert bool(layout.pair_bits) == pair
    assert layout.accumulators == (2 if pair else 1) * len(layout.accumulator_specs())
    plains = ct.encode_rows(pd.DataFrame({"hs": h}), hm if "H" in CASES[metrics] else None, layout)
    assert len(plains) == layout.ciphertexts(n) == ((n + 1) // 2 if pair else n)
    rows = ct.encrypt_rows(pk, plains)
    acc = ct.fold(rows, g, layout, pk, guest_metrics=gm if "G" in CASES[metrics] else None)
    sealed, state = ct.seal(acc, disable_noise_for_tests=True, uniform=uniform)
    plain = [int(p) for p in sk.decrypt_raw(sealed)]
    for p, spec in zip(plain, layout.sealed_specs(), strict=True):  # the masks' offsets: no garbage shows
        if spec.kept_bits is None:
            continue
        assert p >> (spec.shift + spec.kept_bits) >= 1 << spec.high_bits
        assert spec.shift == 0 or p & ((1 << spec.shift) - 1) >= 1 << spec.low_bits
    reply = ct.respond(sk, sealed, layout, disable_noise_for_tests=True)
    table = ct.decode(state if uniform else ct.unmasked_state(layout, int(pk.n)), reply)
    ref = ct.crosstab_local(g, h, layout, host_metrics=hm, guest_metrics=gm)
    np.testing.assert_array_equal(table.counts, ref.counts)
    assert set(table.sums) == set(ref.sums)
    for m in ref.sums:
        np.testing.assert_array_equal(table.sums[m], ref.sums[m])
    if (
        pair and not uniform
    ):  # the recipient decrypts: the halves' kept bits differ, only their sum is the table
        half = len(plain) // 2
        specs = layout.sealed_specs()
        kept = [(p >> s.shift) & ((1 << s.kept_bits) - 1) for p, s in zip(plain, specs, strict=True)]
        assert all(a != r for a, r in zip(kept[:half], reply, strict=True))


def test_a_layout_pairs_only_what_fits():
    options = _options({"G": ("gm",), "H": ("hm",)}, max_categories=64)
    common = {"guest": "G", "host": "H", "rows": 10_000, "key_bits": 1024, "pair": True}
    small = ct.make_layout(options, guest_categories={"gs": (0, 1)}, host_categories={"hs": (0, 1)}, **common)
    wide = ct.make_layout(
        options, guest_categories={"gs": (0, 1)}, host_categories={"hs": tuple(range(20))}, **common
    )
    assert small.pair_bits == small.extent + 65 and 2 * small.extent + 130 <= 1022
    assert wide.pair_bits == 0 and wide.ciphertexts_per_row >= 1
    assert ct.Layout.from_dict(small.to_dict()).pair_bits == small.pair_bits
    unpaired = ct.make_layout(options, guest_categories={"gs": (0, 1)}, host_categories={"hs": (0, 1)},
                              **{**common, "pair": False})  # fmt: skip
    assert unpaired.pair_bits == 0 and unpaired.accumulators == len(unpaired.accumulator_specs())


def test_the_cheaper_rows_encrypt_and_a_tie_keeps_the_host():
    options = _options({"G": ("gm",), "H": ("hm",)}, max_categories=64)
    few, many = {"gs": (0, 1, 2)}, {"hs": tuple(range(30))}
    chosen = plan(options, ("G", few), ("H", many), rows=5000, key_bits=1024)
    assert chosen.encrypts == GUEST and chosen.layout.guest_cells == 30 and chosen.layout.host_cells == 3
    assert chosen.table.guest_cells == 3 and chosen.table.host_cells == 30
    tie = plan(options, ("G", few), ("H", {"hs": (0, 1, 2)}), rows=5000, key_bits=1024)
    assert tie.encrypts == HOST and tie.layout.pair_bits
    host_smaller = plan(
        options, ("G", {"gs": tuple(range(30))}), ("H", {"hs": (0, 1, 2)}), rows=5000, key_bits=1024
    )
    assert host_smaller.encrypts == HOST
    decoded = ct.CrossTab(
        chosen.layout, np.arange(90).reshape(30, 3), {"gm": np.ones((30, 3)), "hm": np.zeros((30, 3))}
    )
    table = oriented(decoded, chosen)
    assert table.counts.shape == (3, 30) and table.counts[1, 2] == decoded.counts[2, 1]


def test_the_guest_refuses_a_direction_that_does_not_follow():
    options = _options({"G": ("gm",), "H": ("hm",)}, max_categories=64)
    few, many = {"gs": (0, 1, 2)}, {"hs": tuple(range(30))}
    chosen = plan(options, ("G", few), ("H", many), rows=5000, key_bits=1024)

    def message(layout, encrypts):
        return pa.table({"layout": [json.dumps(layout.to_dict())], "parts": [1], "encrypts": [encrypts]})

    assert _guest_plan(message(chosen.layout, GUEST), options, "G", "H", 1024, 5000).encrypts == GUEST
    today = ct.make_layout(options, guest="G", host="H", guest_categories=few, host_categories=many, rows=5000,
                           key_bits=1024, pair=True)  # fmt: skip
    with pytest.raises(ProtocolError, match="direction"):
        _guest_plan(message(today, HOST), options, "G", "H", 1024, 5000)
    with pytest.raises(ProtocolError, match="encrypting side"):
        _guest_plan(message(today, "arbiter"), options, "G", "H", 1024, 5000)
