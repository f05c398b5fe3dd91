"""Encrypted cross-tabs against pandas groupby on the joined data (1024-bit test keys, a few hundred rows)."""

from __future__ import annotations

import secrets

import numpy as np
import pandas as pd
import pytest

from vfl.analytics import crosstab as ct
from vfl.analytics.dp import AudienceOptions, noise_limit
from vfl.datasets import marketing
from vfl.errors import ConfigError, DataError, IntegrityError

ROWS = 300
BOUNDS = {"spend": (0.0, 150.0), "balance": (-100.0, 6000.0)}


@pytest.fixture(scope="module")
def joined() -> pd.DataFrame:
    """Shared customers of the retailer (guest) and the bank (host), in one shared order."""
    d = marketing(1500, seed=7)
    j = d["retailer"].merge(d["bank"], on="id").head(ROWS).reset_index(drop=True)
    j["products"] = np.minimum(j["products_held"], 3).astype(str)
    return j


def _options(host_segments: list[str], guest_metrics: bool = True) -> AudienceOptions:
    return AudienceOptions(
        segments={"retailer": ["age_band"], "bank": host_segments},
        metrics={"retailer": ["spend"] if guest_metrics else [], "bank": ["balance"]},
        bounds=dict(BOUNDS) if guest_metrics else {"balance": BOUNDS["balance"]},
    )


def _layout(opt: AudienceOptions, gcat: dict, hcat: dict, pk, rows: int = ROWS) -> ct.Layout:
    """The retailer x bank layout of ``opt`` under the bank's key ``pk``."""
    return ct.make_layout(
        opt,
        guest="retailer",
        host="bank",
        guest_categories=gcat,
        host_categories=hcat,
        rows=rows,
        key_bits=pk.bits,
    )


def _run(j: pd.DataFrame, opt: AudienceOptions, keys, *, guest_noise: bool = False, host_noise: bool = False):
    pk, sk = keys
    g_cols, h_cols = list(opt.segments["retailer"]), list(opt.segments["bank"])
    gcat = ct.categories_of(j, g_cols, opt, "retailer")
    hcat = ct.categories_of(j, h_cols, opt, "bank")
    layout = _layout(opt, gcat, hcat, pk, rows=len(j))
    # host: one packed plaintext (or a few) per shared row, encrypted under its own key
    rows = ct.encrypt_rows(pk, ct.encode_rows(j[h_cols], j[["balance"]], layout))
    # guest: fold, add its noise share and a mask
    acc = ct.fold(rows, ct.cell_codes(j, gcat), layout, pk, guest_metrics=j[["spend"]])
    sealed, state = ct.seal(acc, disable_noise_for_tests=not guest_noise)
    # host: decrypt the masked values, add its noise share
    reply = ct.respond(sk, sealed, layout, disable_noise_for_tests=not host_noise)
    return layout, ct.decode(state, reply)


def _expected(j: pd.DataFrame, layout: ct.Layout) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """pandas groupby on the joined rows, with the same clipping and 2^-8 quantization."""
    g_cols, h_cols = list(layout.guest_categories), list(layout.host_categories)
    frame = j[g_cols + h_cols].astype(str).copy()
    for m in ("spend", "balance"):
        lo, hi = BOUNDS[m]
        frame[m] = np.rint(j[m].clip(lo, hi) * 256) / 256
    grouped = frame.groupby(g_cols + h_cols, observed=True)
    full = pd.MultiIndex.from_tuples(
        [
            tuple(map(str, (*g, *h)))
            for g in ct.cell_labels(layout.guest_categories)
            for h in ct.cell_labels(layout.host_categories)
        ],
        names=g_cols + h_cols,
    )
    shape = (layout.guest_cells, layout.host_cells)
    counts = grouped.size().reindex(full, fill_value=0).to_numpy().reshape(shape)
    sums = {
        m: grouped[m].sum().reindex(full, fill_value=0.0).to_numpy().reshape(shape)
        for m in ("spend", "balance")
    }
    return counts, sums


@pytest.mark.parametrize("host_segments", [["income_band"], ["income_band", "products"]])
def test_counts_and_sums_match_pandas_groupby(
    joined: pd.DataFrame, host_keys, host_segments: list[str]
) -> None:
    layout, table = _run(joined, _options(host_segments), host_keys)
    counts, sums = table.values()
    exp_counts, exp_sums = _expected(joined, layout)
    assert counts.sum() == ROWS
    np.testing.assert_array_equal(counts, exp_counts)
    for m in ("spend", "balance"):  # host metric and guest metric, by (guest cell x host cell)
        np.testing.assert_array_equal(sums[m], exp_sums[m])
    # 5 host cells: counts and host-metric slots fit one block (the guest-metric accumulators are truncated
    # to the count slots); 20 cells do not fit a 1024-bit key that way: counts get a block of their own
    mixed = len(host_segments) == 1
    assert layout.mixed == mixed and layout.count_blocks == 1 and len(layout.blocks) == (1 if mixed else 2)
    frame = table.to_frame()
    assert len(frame) == layout.guest_cells * layout.host_cells
    assert list(frame.columns[: 1 + len(host_segments)]) == ["age_band", *host_segments]


def test_one_ciphertext_per_row_without_guest_metrics(joined: pd.DataFrame, host_keys) -> None:
    layout, table = _run(joined, _options(["income_band"], guest_metrics=False), host_keys)
    assert len(layout.blocks) == 1 and layout.accumulators == layout.guest_cells
    exp_counts, exp_sums = _expected(joined, layout)
    np.testing.assert_array_equal(table.counts, exp_counts)
    np.testing.assert_array_equal(table.values()[1]["balance"], exp_sums["balance"])


def test_each_party_adds_a_full_share_of_noise(joined: pd.DataFrame, host_keys) -> None:
    opt = _options(["income_band"])
    layout, exact = _run(joined, opt, host_keys)
    limit = {m: noise_limit(layout.epsilon[m], layout.sensitivity(m)) for m in layout.measures}
    for guest_noise, host_noise in [(True, False), (False, True), (True, True)]:
        _, noised = _run(joined, opt, host_keys, guest_noise=guest_noise, host_noise=host_noise)
        diff = noised.counts - exact.counts
        assert (diff != 0).any(), (guest_noise, host_noise)
        shares = guest_noise + host_noise
        assert np.abs(diff).max() <= shares * limit["count"]
        for m in ("spend", "balance"):
            d = noised.sums[m] - exact.sums[m]
            assert (d != 0).any() and np.abs(d).max() <= shares * limit[m]
    rel = noised.release(opt.k)
    assert (rel.released == (noised.counts >= opt.k)).all()
    assert (
        np.isnan(rel.sums["spend"][~rel.released]).all()
        and np.isnan(rel.means["balance"][~rel.released]).all()
    )
    frame = noised.to_frame(k=opt.k)
    assert frame["suppressed"].sum() == (~rel.released).sum()
    assert frame.loc[frame["suppressed"], ["count", "sum_spend", "mean_balance"]].isna().all().all()


def test_the_host_decrypts_only_masked_values(joined: pd.DataFrame, host_keys) -> None:
    pk, sk = host_keys
    opt = _options(["income_band"], guest_metrics=False)
    cats = {"age_band": tuple(joined["age_band"].cat.categories)}
    hcat = {"income_band": tuple(joined["income_band"].cat.categories)}
    layout = _layout(opt, cats, hcat, pk)
    rows = ct.encrypt_rows(pk, ct.encode_rows(joined[["income_band"]], joined[["balance"]], layout))
    acc = ct.fold(rows, ct.cell_codes(joined, cats), layout, pk)
    sealed, _ = ct.seal(acc, disable_noise_for_tests=True)
    plain, masked = sk.decrypt_raw(acc.ciphertexts), sk.decrypt_raw(sealed)
    assert all(a != b for a, b in zip(plain, masked, strict=True))
    assert all(c1 != c2 for c1, c2 in zip(acc.ciphertexts, sealed, strict=True))


def test_overlap_is_a_cross_tab_without_segments(host_keys) -> None:
    pk, sk = host_keys
    opt = AudienceOptions()
    layout = ct.make_layout(
        opt, guest="g", host="h", guest_categories={}, host_categories={}, rows=1000, key_bits=pk.bits
    )
    n = 123
    rows = ct.encrypt_rows(pk, ct.encode_rows(pd.DataFrame(index=range(n)), None, layout))
    acc = ct.fold(rows, np.zeros(n, dtype=int), layout, pk)
    sealed, state = ct.seal(acc, disable_noise_for_tests=True)
    table = ct.decode(state, ct.respond(sk, sealed, layout, disable_noise_for_tests=True))
    assert table.counts.tolist() == [[n]]


def test_rows_left_out_with_minus_one(joined: pd.DataFrame, host_keys) -> None:
    pk, sk = host_keys
    opt = _options(["income_band"], guest_metrics=False)
    gcat = ct.categories_of(joined, ["age_band"], opt, "retailer")
    hcat = ct.categories_of(joined, ["income_band"], opt, "bank")
    layout = _layout(opt, gcat, hcat, pk)
    cells = ct.cell_codes(joined, gcat)
    cells[:100] = -1
    rows = ct.encrypt_rows(pk, ct.encode_rows(joined[["income_band"]], joined[["balance"]], layout))
    sealed, state = ct.seal(ct.fold(rows, cells, layout, pk), disable_noise_for_tests=True)
    table = ct.decode(state, ct.respond(sk, sealed, layout, disable_noise_for_tests=True))
    ref = ct.crosstab_local(cells, ct.cell_codes(joined, hcat), layout, host_metrics=joined)
    assert table.counts.sum() == ROWS - 100
    np.testing.assert_array_equal(table.counts, ref.counts)
    np.testing.assert_array_equal(table.sums["balance"], ref.sums["balance"])


def test_layout_checks(joined: pd.DataFrame, host_keys) -> None:
    pk, _ = host_keys
    opt = _options(["income_band"])
    gcat = ct.categories_of(joined, ["age_band"], opt, "retailer")
    hcat = ct.categories_of(joined, ["income_band"], opt, "bank")
    layout = _layout(opt, gcat, hcat, pk, rows=50)
    assert ct.Layout.from_dict(layout.to_dict()) == layout
    with pytest.raises(IntegrityError, match="slot width"):
        ct.Layout.from_dict({**layout.to_dict(), "slot_bits": layout.slot_bits - 1})
    with pytest.raises(DataError, match="exceed the layout"):  # more rows folded than the slots hold
        rows = ct.encrypt_rows(pk, ct.encode_rows(joined[["income_band"]], joined[["balance"]], layout))
        ct.fold(rows, np.zeros(len(joined), dtype=int), layout, pk)
    small = joined.head(50).copy()
    small["income_band"] = small["income_band"].astype(str)
    small.loc[3, "income_band"] = "lottery winner"
    with pytest.raises(DataError, match="'lottery winner' outside its declared categories"):
        ct.encode_rows(small[["income_band"]], small[["balance"]], layout)
    with pytest.raises(DataError, match="categories given for"):
        _layout(opt, gcat, {}, pk, rows=50)
    few = _options(["income_band"]).__class__(**{**opt.to_dict(), "max_categories": 3})
    with pytest.raises(ConfigError, match="max_categories"):
        ct.categories_of(joined, ["income_band"], few, "bank")


def test_balanced_slot_unpacking_round_trips() -> None:
    for _ in range(200):
        bits = 12
        values = [secrets.randbelow(1 << (bits - 1)) * (1 if secrets.randbits(1) else -1) for _ in range(9)]
        values = [max(v, -(1 << (bits - 1)) + 1) for v in values]
        total = sum(v << (bits * i) for i, v in enumerate(values))
        assert ct.unpack_signed(total, len(values), bits) == values
    with pytest.raises(IntegrityError):
        ct.unpack_signed(1 << 40, 2, 12)


def test_plain_sums_of_the_guests_own_metrics(joined: pd.DataFrame) -> None:
    opt = _options(["income_band"])
    gcat = ct.categories_of(joined, ["age_band"], opt, "retailer")
    cells = ct.cell_codes(joined, gcat)
    sums = ct.plain_sums(cells, joined, {"spend": BOUNDS["spend"]}, len(gcat["age_band"]), 8)
    q = np.rint(joined["spend"].clip(*BOUNDS["spend"]) * 256) / 256
    exp = (
        q.groupby(joined["age_band"].astype(str))
        .sum()
        .reindex([str(c) for c in gcat["age_band"]], fill_value=0.0)
    )
    np.testing.assert_array_equal(sums["spend"], exp.to_numpy())


def test_workers_give_the_same_table(joined: pd.DataFrame, host_keys) -> None:
    from vfl.crypto import WorkerPool

    pk, sk = host_keys
    opt = _options(["income_band", "products"])
    gcat = ct.categories_of(joined, ["age_band"], opt, "retailer")
    hcat = ct.categories_of(joined, ["income_band", "products"], opt, "bank")
    layout = _layout(opt, gcat, hcat, pk)
    with WorkerPool(2, min_items=1) as pool:
        rows = ct.encrypt_rows(
            pk, ct.encode_rows(joined[list(hcat)], joined[["balance"]], layout), workers=pool
        )
        acc = ct.fold(
            rows, ct.cell_codes(joined, gcat), layout, pk, guest_metrics=joined[["spend"]], workers=pool
        )
    sealed, state = ct.seal(acc, disable_noise_for_tests=True)
    table = ct.decode(state, ct.respond(sk, sealed, layout, disable_noise_for_tests=True))
    ref = ct.crosstab_local(
        ct.cell_codes(joined, gcat),
        ct.cell_codes(joined, hcat),
        layout,
        host_metrics=joined,
        guest_metrics=joined,
    )
    np.testing.assert_array_equal(table.counts, ref.counts)
    for m in ("spend", "balance"):
        np.testing.assert_array_equal(table.sums[m], ref.sums[m])


def test_the_guest_refuses_a_layout_that_does_not_follow_from_the_options(
    joined: pd.DataFrame, host_keys
) -> None:
    from vfl.errors import ProtocolError

    pk, _ = host_keys
    opt = _options(["income_band"])
    gcat = ct.categories_of(joined, ["age_band"], opt, "retailer")
    hcat = ct.categories_of(joined, ["income_band"], opt, "bank")
    kw = {"guest": "retailer", "host": "bank", "key_bits": pk.bits}
    layout = ct.make_layout(opt, guest_categories=gcat, host_categories=hcat, rows=ROWS, **kw)
    assert ct.verify_layout(layout.to_dict(), opt, max_rows=ROWS, **kw) == layout
    greedy = AudienceOptions(**{**opt.to_dict(), "epsilon": 5.0})
    sent = ct.make_layout(greedy, guest_categories=gcat, host_categories=hcat, rows=ROWS, **kw).to_dict()
    with pytest.raises(ProtocolError, match="disagrees with the job options on epsilon"):
        ct.verify_layout(sent, opt, max_rows=ROWS, **kw)
    with pytest.raises(
        ProtocolError, match="disagrees"
    ):  # the job releases two tables: half the epsilon each
        ct.verify_layout(layout.to_dict(), opt, max_rows=ROWS, tables=2, **kw)
    with pytest.raises(ProtocolError, match="more than the"):
        ct.verify_layout(layout.to_dict(), opt, max_rows=ROWS - 1, **kw)
    with pytest.raises(IntegrityError, match="malformed"):
        ct.verify_layout({"rows": 3}, opt, max_rows=ROWS, **kw)


def test_multiexp_matches_pow(host_keys) -> None:
    from vfl.analytics.rows import multiexp

    pk, _ = host_keys
    n2 = pk.n_square
    rng = np.random.default_rng(3)
    bases = [pk.h_s * (i + 2) % n2 for i in range(40)]
    for bits in (1, 7, 20):
        exps = rng.integers(0, 1 << bits, size=len(bases), dtype=np.int64)
        expected = 1
        for b, e in zip(bases, exps.tolist(), strict=True):
            expected = expected * pow(int(b), e, int(n2)) % int(n2)
        assert multiexp(bases, exps, n2) == expected


def test_truncated_accumulators_return_only_their_count_slots(joined: pd.DataFrame, host_keys) -> None:
    """A guest metric over a mixed block: the host's decryption is masked in the bits it returns and above
    them (where the products of both parties' metrics sit); its reply holds the count slots alone."""
    pk, sk = host_keys
    opt = _options(["income_band"])
    gcat = ct.categories_of(joined, ["age_band"], opt, "retailer")
    hcat = ct.categories_of(joined, ["income_band"], opt, "bank")
    layout = _layout(opt, gcat, hcat, pk, rows=len(joined))
    specs = layout.accumulator_specs()
    truncated = [i for i, s in enumerate(specs) if s.kept_bits is not None]
    assert layout.mixed and len(truncated) == layout.guest_cells and len(layout.blocks) == 1
    rows = ct.encrypt_rows(pk, ct.encode_rows(joined[["income_band"]], joined[["balance"]], layout))
    acc = ct.fold(rows, ct.cell_codes(joined, gcat), layout, pk, guest_metrics=joined[["spend"]])
    seen = []
    for _ in range(2):
        sealed, state = ct.seal(acc, disable_noise_for_tests=True)
        plain = sk.decrypt_raw(sealed)
        reply = ct.respond(sk, sealed, layout, disable_noise_for_tests=True)
        for i in truncated:
            kept, high = specs[i].kept_bits, specs[i].high_bits
            assert int(plain[i]) >> kept >= 1 << high  # the mask's offset: nothing of the products shows
            assert 0 <= reply[i] < 1 << kept
        seen.append([int(plain[i]) for i in truncated])
    for a, b in zip(*seen, strict=True):
        kept = specs[truncated[0]].kept_bits
        assert a & ((1 << kept) - 1) != b & ((1 << kept) - 1) and a >> kept != b >> kept
