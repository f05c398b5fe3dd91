"""The synthetic marketing audience: shape, determinism, overlap, correlations and speed."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from vfl.datasets import marketing
from vfl.datasets.marketing import INCOME_BANDS


@pytest.fixture(scope="module")
def small() -> dict[str, pd.DataFrame]:
    return marketing(20_000, seed=3)


def test_columns_and_types(small: dict[str, pd.DataFrame]) -> None:
    assert list(small) == ["retailer", "bank", "publisher"]
    assert list(small["retailer"].columns) == [
        "id",
        "purchase",
        "age_band",
        "region",
        "channel",
        "spend",
        "visits",
    ]
    assert list(small["bank"].columns) == ["id", "income_band", "products_held", "balance"]
    assert list(small["publisher"].columns) == ["id", "interest_segment", "page_visits"]
    for frame in small.values():
        assert frame["id"].is_unique and frame["id"].is_monotonic_increasing
        assert frame["id"].dtype == np.int64 and frame["id"].min() >= 10**10
        assert not frame.isna().any().any()
    assert set(small["retailer"]["purchase"].unique()) == {0, 1}
    assert isinstance(small["bank"]["income_band"].dtype, pd.CategoricalDtype)


def test_overlap_and_partner_sizes(small: dict[str, pd.DataFrame]) -> None:
    r = set(small["retailer"]["id"])
    n = len(r)
    for partner, share in (("bank", 0.6), ("publisher", 0.4)):
        ids = set(small[partner]["id"])
        assert len(ids) == n
        assert abs(len(r & ids) / n - share) < 0.02
    custom = marketing(2000, seed=1, overlap={"bank": 0.1})
    shared = custom["retailer"].merge(custom["bank"], on="id")
    assert abs(len(shared) / 2000 - 0.1) < 0.04
    with pytest.raises(ValueError, match="unknown partners"):
        marketing(10, overlap={"insurer": 0.5})


def test_deterministic_from_the_seed() -> None:
    a, b, c = marketing(3000, seed=11), marketing(3000, seed=11), marketing(3000, seed=12)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["retailer"]["spend"].equals(c["retailer"]["spend"])
    chunked = marketing(3000, seed=11, chunk=700)  # several chunks per population
    assert len(chunked["retailer"]) == 3000 and chunked["retailer"]["id"].is_unique


def test_partner_columns_correlate_with_the_label(small: dict[str, pd.DataFrame]) -> None:
    r = small["retailer"]
    bank = r.merge(small["bank"], on="id")
    pub = r.merge(small["publisher"], on="id")
    y = bank["purchase"]
    assert np.corrcoef(y, np.log(bank["balance"]))[0, 1] > 0.1
    assert np.corrcoef(y, bank["products_held"])[0, 1] > 0.05
    by_income = bank.groupby("income_band", observed=True)["purchase"].mean().reindex(list(INCOME_BANDS))
    assert by_income.is_monotonic_increasing and by_income.iloc[-1] - by_income.iloc[0] > 0.15
    assert np.corrcoef(pub["purchase"], pub["page_visits"])[0, 1] > 0.08
    by_interest = pub.groupby("interest_segment", observed=True)["purchase"].mean()
    assert by_interest[["fashion", "home"]].min() > by_interest[["travel", "sports"]].max()
    assert np.corrcoef(r["purchase"], np.log(r["spend"]))[0, 1] > 0.05
    assert 0.15 < r["purchase"].mean() < 0.35


def test_a_million_rows_in_under_ten_seconds() -> None:
    start = time.perf_counter()
    d = marketing(1_000_000, seed=5)
    elapsed = time.perf_counter() - start
    assert len(d["retailer"]) == 1_000_000 and len(d["bank"]) == 1_000_000
    assert sum(f.memory_usage(deep=True).sum() for f in d.values()) < 100e6
    assert elapsed < 10, f"took {elapsed:.1f} s"
