"""Exactness through the test-only hook (no noise): the cross-tab equals pandas groupby on the joined data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import vfl
from tests.audience.conftest import BOUNDS, audience_options


def _quantized(x: pd.Series, column: str) -> pd.Series:
    lo, hi = BOUNDS[column]
    return np.rint(np.clip(x.astype(float), lo, hi) * 256) / 256


def _columns(*cols: str | list[str]) -> list[str]:
    return [c for col in cols for c in ([col] if isinstance(col, str) else col)]


def _expected(
    guest: pd.DataFrame, host: pd.DataFrame, g_col: str, h_col: str | list[str], metrics: list[str]
) -> pd.DataFrame:
    """pandas groupby on the joined data (``h_col``: one host segment column or several), every cell."""
    j = guest.merge(host, on="id")
    for m in metrics:
        j[m] = _quantized(j[m], m)
    keys = _columns(g_col, h_col)
    for c in keys:  # a plain column's cells are the values in its owner's data, every combination shown
        if not isinstance(j[c].dtype, pd.CategoricalDtype):
            owner = guest if c in guest.columns else host
            j[c] = j[c].astype(pd.CategoricalDtype(sorted(owner[c].unique().tolist())))
    agg = {"count": ("id", "size"), **{f"sum_{m}": (m, "sum") for m in metrics}}
    out = j.groupby(keys, observed=False).agg(**agg).reset_index()
    for c in keys:
        out[c] = out[c].astype(str)
    return out


def _check(
    released: pd.DataFrame,
    expected: pd.DataFrame,
    g_col: str,
    h_col: str | list[str],
    metrics: list[str],
    shown_at_least: float = 0.8,
) -> None:
    got = released.copy()
    keys = _columns(g_col, h_col)
    for c in keys:
        got[c] = got[c].astype(str)
    merged = expected.merge(got, on=keys, suffixes=("_want", "_got"), how="outer", validate="1:1")
    assert len(merged) == len(expected) == len(got)
    shown = ~merged["suppressed"].astype(bool)
    assert shown.sum() > shown_at_least * len(merged)
    np.testing.assert_array_equal(merged.loc[shown, "count_got"], merged.loc[shown, "count_want"])
    assert (merged.loc[~shown, "count_want"] < 2).all()  # withheld only below k = 2
    for m in metrics:
        np.testing.assert_allclose(
            merged.loc[shown, f"sum_{m}_got"], merged.loc[shown, f"sum_{m}_want"], atol=1e-6
        )


def test_one_host_counts_and_sums_equal_groupby(market, host_keypairs, tmp_path):
    r, b = market["retailer"], market["bank"]
    result = vfl.simulate_audience(
        r, {"bank": b}, id="id", guest_name="retailer", keypairs=host_keypairs, workers=1,
        _noise_off_for_tests=("retailer", "bank"), output_dir=tmp_path, **audience_options(),
    )  # fmt: skip
    expected = _expected(r, b, "age_band", "income_band", ["spend", "balance"])
    _check(result.crosstabs["bank"], expected, "age_band", "income_band", ["spend", "balance"])
    # the host receives the same released table
    _check(
        result.hosts["bank"].crosstabs["retailer"], expected, "age_band", "income_band", ["spend", "balance"]
    )
    shared = len(r.merge(b, on="id"))
    assert result.overlap["size"].tolist() == [shared]
    by_segment = result.guest.overlap_by_segment
    want = r[r["id"].isin(b["id"])].groupby("age_band", observed=False).size()
    got = by_segment.set_index("age_band")["shared"]
    assert got.astype(float).to_dict() == pytest.approx(want.astype(float).to_dict())
    for name in ("overlap.csv", "overlap.parquet", "crosstab_bank.csv", "crosstab_bank.parquet",
                 "audience_report.html", "ledger.json"):  # fmt: skip
        assert (tmp_path / "retailer" / name).exists(), name
    assert (
        pd.read_parquet(tmp_path / "retailer" / "crosstab_bank.parquet").shape
        == result.crosstabs["bank"].shape
    )
    report = (tmp_path / "retailer" / "audience_report.html").read_text()
    assert "heat map bank" in report and "NOISE WAS DISABLED" not in report and "test hook" in report


def test_two_hosts_each_table_and_the_overlap_of_all(market, host_keypairs):
    r, b, p = market["retailer"], market["bank"], market["publisher"]
    result = vfl.simulate_audience(
        r, {"bank": b, "publisher": p}, id="id", guest_name="retailer", keypairs=host_keypairs, workers=1,
        _noise_off_for_tests=("retailer", "bank", "publisher"), **audience_options(("bank", "publisher")),
    )  # fmt: skip
    _check(result.crosstabs["bank"], _expected(r, b, "age_band", "income_band", ["spend", "balance"]),
           "age_band", "income_band", ["spend", "balance"])  # fmt: skip
    _check(result.crosstabs["publisher"],
           _expected(r, p, "age_band", "interest_segment", ["spend", "page_visits"]),
           "age_band", "interest_segment", ["spend", "page_visits"])  # fmt: skip
    sizes = dict(zip(result.overlap["between"], result.overlap["size"], strict=True))
    assert sizes["retailer ∩ bank"] == len(r.merge(b, on="id"))
    assert sizes["retailer ∩ publisher"] == len(r.merge(p, on="id"))
    assert sizes["all parties"] == len(r.merge(b, on="id").merge(p, on="id"))
    # a host sees its own table only
    assert set(result.hosts["bank"].crosstabs) == {"retailer"}
    assert "page_visits" not in " ".join(result.hosts["bank"].crosstabs["retailer"].columns)


def test_a_host_without_columns_gives_counts_by_guest_segment(market, host_keypairs):
    """The host offers no column: its every row is one cell; the table is the shared customers by guest segment."""
    r, b = market["retailer"], market["bank"]
    options = {"segments": {"retailer": ["age_band"]}, "metrics": {"retailer": ["spend"]},
               "bounds": {"spend": BOUNDS["spend"]}, "key_bits": 1024, "k": 2}  # fmt: skip
    result = vfl.simulate_audience(
        r, {"bank": b}, id="id", guest_name="retailer", keypairs=host_keypairs, workers=1,
        _noise_off_for_tests=("retailer", "bank"), **options,
    )  # fmt: skip
    j = r.merge(b, on="id")
    j["spend"] = _quantized(j["spend"], "spend")
    want = j.groupby("age_band", observed=False).agg(count=("id", "size"), sum_spend=("spend", "sum"))
    got = result.crosstabs["bank"].set_index(result.crosstabs["bank"]["age_band"].astype(str))
    want.index = want.index.astype(str)
    np.testing.assert_array_equal(got.loc[want.index, "count"], want["count"])
    np.testing.assert_allclose(got.loc[want.index, "sum_spend"], want["sum_spend"], atol=1e-6)
