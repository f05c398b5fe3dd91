"""Feature screening: bins, minimum sizes, WOE/IV from counts equal to pandas on the joined data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vfl.crypto import encrypt
from vfl.errors import DataError
from vfl.screening import (
    Binning,
    bin_column,
    bin_counts,
    decrypt_bin_counts,
    encrypted_bin_sums,
    information_value,
    iv_table,
    merge_counts,
    merge_small_bins,
    monotone_groups,
    optimal_monotone_binning,
    quantile_binning,
    strength,
    woe_iv,
    woe_table,
)


def _column(rng: np.random.Generator, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-1.5 * x))).astype(int)
    x[rng.uniform(size=n) < 0.05] = np.nan
    return x, y


def _pandas_woe(x: np.ndarray, y: np.ndarray, binning: Binning) -> pd.DataFrame:
    """WOE/IV the textbook way on a joined frame (same smoothing rule)."""
    df = pd.DataFrame({"x": x, "y": y})
    df["bin"] = binning.assign(df["x"].to_numpy())
    g = df.groupby("bin")["y"].agg(events="sum", rows="size").reindex(range(binning.n_bins), fill_value=0)
    g["non_events"] = g["rows"] - g["events"]
    adjust = (g["rows"] > 0) & ((g["events"] == 0) | (g["non_events"] == 0))
    e = g["events"].astype(float).where(~adjust, g["events"] + 0.5)
    ne = g["non_events"].astype(float).where(~adjust, g["non_events"] + 0.5)
    de, dn = e / g["events"].sum(), ne / g["non_events"].sum()
    g["woe"] = np.log(de / dn).where(g["rows"] > 0, 0.0)
    g["iv"] = ((de - dn) * g["woe"]).where(g["rows"] > 0, 0.0)
    return g


def test_quantile_bins_equal_pandas_qcut() -> None:
    rng = np.random.default_rng(0)
    for values in (
        rng.normal(size=500),
        rng.integers(0, 4, 500).astype(float),
        np.r_[np.zeros(90), 1.0, 2.0],
    ):
        for bins in (2, 5, 10):
            binning = quantile_binning(values, bins)
            codes = pd.qcut(values, bins, duplicates="drop", labels=False)
            assert (binning.assign(values) == codes).all()
    x = np.array([1.0, np.nan, 3.0])
    b = quantile_binning(x, 2)
    assert b.assign(x).tolist() == [0, b.missing_bin, 1]
    assert b.labels() == ["(-inf, 2]", "(2, +inf]", "missing"]


def test_woe_iv_from_counts_equals_pandas_on_joined_data() -> None:
    rng = np.random.default_rng(1)
    x, y = _column(rng)
    binning = quantile_binning(x, 10)
    events, non_events = bin_counts(binning.assign(x), y, binning.n_bins)
    woe, iv = woe_iv(events, non_events)
    ref = _pandas_woe(x, y, binning)
    assert events.tolist() == ref["events"].tolist() and non_events.tolist() == ref["non_events"].tolist()
    np.testing.assert_array_equal(woe, ref["woe"].to_numpy())
    np.testing.assert_array_equal(iv, ref["iv"].to_numpy())
    assert information_value(events, non_events) == pytest.approx(ref["iv"].sum(), rel=1e-15)
    table = woe_table(events, non_events, binning)
    assert list(table.columns) == ["bin", "rows", "events", "non_events", "event_rate", "woe", "iv"]


def test_smoothing_and_empty_bins() -> None:
    woe, iv = woe_iv([0, 5, 5, 0], [5, 5, 0, 0])
    assert woe[0] == np.log((0.5 / 10) / (5.5 / 10)) and woe[2] == np.log((5.5 / 10) / (0.5 / 10))
    assert woe[3] == 0.0 and iv[3] == 0.0 and woe[1] == 0.0
    with pytest.raises(DataError, match="one class only"):
        woe_iv([0, 0], [3, 4])


def test_strength_labels_and_iv_table() -> None:
    assert [strength(v) for v in (0.0, 0.019, 0.02, 0.099, 0.1, 0.29, 0.3, 0.49, 0.5, 2.0)] == [
        "useless", "useless", "weak", "weak", "medium", "medium", "strong", "strong", "suspicious", "suspicious",
    ]  # fmt: skip
    rng = np.random.default_rng(2)
    x, y = _column(rng)
    noise = rng.normal(size=len(y))
    cols = {}
    for name, v in (("x", x), ("noise", noise)):
        b = quantile_binning(v, 10)
        cols[name] = bin_counts(b.assign(v), y, b.n_bins)
    table = iv_table(cols)
    assert table["column"].tolist() == ["x", "noise"]
    assert table.loc[0, "strength"] in ("strong", "suspicious") and table.loc[1, "strength"] in (
        "useless",
        "weak",
    )


def test_merge_small_bins() -> None:
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(size=200), [50.0, 51.0], [np.nan] * 3]
    binning = Binning((-1.0, 0.0, 1.0, 49.0))
    counts = bin_counts(binning.assign(x), None, binning.n_bins)
    assert counts[-2] == 2 and counts[-1] == 3
    merged = merge_small_bins(binning, counts, k=10)
    new_counts = bin_counts(merged.assign(x), None, merged.n_bins)
    assert all(c == 0 or c >= 10 for c in new_counts)
    assert new_counts.sum() == len(x) and new_counts[-1] == 0 and merged.missing_into is not None
    assert merged.cuts == (-1.0, 0.0, 1.0)
    everything = merge_small_bins(binning, counts, k=10_000)
    assert everything.n_value_bins == 1
    assert merge_counts([1, 2, 3, 4], [[0, 1], [2]], missing_into=0).tolist() == [7, 3, 0]


def test_monotone_binning() -> None:
    rng = np.random.default_rng(4)
    x, y = _column(rng, 2000)
    y[(x > 0.5) & (x < 0.9)] = 0  # a dent in an increasing trend
    binning, events, non_events = optimal_monotone_binning(x, y, bins=12, k=50)
    woe, _ = woe_iv(events, non_events)
    value_woe = woe[: binning.n_value_bins]
    assert np.all(np.diff(value_woe) > 0)
    counts = bin_counts(binning.assign(x), None, binning.n_bins)
    assert all(c == 0 or c >= 50 for c in counts)
    assert (counts == events + non_events).all()
    assert monotone_groups([5, 1, 5, 9, 0], [5, 9, 5, 1, 0]) == [[0, 1], [2], [3]]
    assert monotone_groups([9, 5, 1, 0], [1, 5, 9, 0]) == [[0], [1], [2]]  # decreasing is fine


def test_encrypted_bin_sums_equal_pandas(keypair) -> None:
    pk, sk = keypair
    rng = np.random.default_rng(5)
    x, y = _column(rng, 120)
    binning = quantile_binning(x, 5)  # host side
    binning = merge_small_bins(binning, bin_counts(binning.assign(x), None, binning.n_bins), k=5)
    bins = binning.assign(x)
    encrypted_y = encrypt(pk, y.astype(np.int64), exponent=0)  # guest -> host
    sums, counts = encrypted_bin_sums(encrypted_y, bins, binning.n_bins, k=5)  # host -> guest
    events, non_events = decrypt_bin_counts(sk, sums, counts)  # guest
    ref = _pandas_woe(x, y, binning)
    assert events.tolist() == ref["events"].tolist()
    assert non_events.tolist() == ref["non_events"].tolist()
    np.testing.assert_array_equal(woe_iv(events, non_events)[0], ref["woe"].to_numpy())
    with pytest.raises(DataError, match="fewer than k=1000"):
        encrypted_bin_sums(encrypted_y, bins, binning.n_bins, k=1000)


def test_bin_column_entry_point() -> None:
    rng = np.random.default_rng(6)
    x, y = _column(rng, 500)
    q = bin_column(x, bins=8, k=40)
    assert all(c == 0 or c >= 40 for c in bin_counts(q.assign(x), None, q.n_bins))
    m = bin_column(x, bins=8, method="monotone", labels=y, k=40)
    e, ne = bin_counts(m.assign(x), y, m.n_bins)
    assert np.all(np.diff(woe_iv(e, ne)[0][: m.n_value_bins]) > 0)
    with pytest.raises(DataError, match="needs the labels"):
        bin_column(x, method="monotone")
    with pytest.raises(DataError, match="unknown binning method"):
        bin_column(x, method="tree")
