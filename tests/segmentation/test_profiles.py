import numpy as np
import pytest

from vfl.errors import ConfigError, DataError
from vfl.segmentation.profiles import enforce_min_size, profile_segments, segment_sums, wilson_interval
from vfl.segmentation.synthetic import marketing_like

from .helpers import geometric_noise, segment


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(np.array([5.0, 0.0]), np.array([10.0, 20.0]))
    assert low[0] == pytest.approx(0.2366, abs=1e-4) and high[0] == pytest.approx(0.7634, abs=1e-4)
    assert low[1] == 0.0 and high[1] == pytest.approx(0.1611, abs=1e-4)
    # noise can push a count negative or above the size: clipped, never NaN
    low, high = wilson_interval(np.array([-2.0, 12.0]), np.array([10.0, 10.0]))
    assert np.all((low >= 0) & (high <= 1))


def test_merge_into_nearest_and_suppress() -> None:
    cents = [np.array([[0.0], [10.0], [1.0], [11.0]])]
    sizes = np.array([100.0, 100.0, 5.0, 3.0])
    mapping = enforce_min_size(sizes, 10, centroids=cents)
    np.testing.assert_array_equal(mapping, [0, 1, 0, 1])
    np.testing.assert_array_equal(enforce_min_size(sizes, 10, policy="suppress"), [0, 1, -1, -1])
    # cascading merges: small + small is still small, then joins the nearest big segment
    mapping = enforce_min_size(np.array([100.0, 4.0, 4.0]), 10, centroids=[np.array([[0.0], [5.0], [6.0]])])
    np.testing.assert_array_equal(mapping, [0, 0, 0])
    with pytest.raises(DataError, match="smaller than the minimum segment size"):
        enforce_min_size(np.array([3.0, 4.0]), 10, centroids=[np.zeros((2, 1))])
    with pytest.raises(ConfigError, match="centroids"):
        enforce_min_size(sizes, 10)
    with pytest.raises(ConfigError, match="policy"):
        enforce_min_size(sizes, 10, policy="drop")


def test_profiles_from_exact_aggregates_equal_segment_means() -> None:
    data = marketing_like(5000, seed=3)
    grid, _, seg = segment(data.parts, 5, epsilon=None)
    k = grid.n_segments
    sizes = np.bincount(seg, minlength=k).astype(float)
    sums = {"retailer": segment_sums(seg, data.parts[0], k), "bank": segment_sums(seg, data.parts[1], k)}
    prof = profile_segments(
        sizes,
        positives=segment_sums(seg, data.outcome, k)[:, 0],
        column_sums=sums,
        column_names={"bank": [f"b{j}" for j in range(8)]},
    )
    t = prof.table
    assert len(t) == k and list(t["size"]) == list(sizes)
    for j in range(k):
        rows = seg == j
        assert t.loc[j, "rate"] == pytest.approx(data.outcome[rows].mean())
        assert t.loc[j, "rate_low"] <= t.loc[j, "rate"] <= t.loc[j, "rate_high"]
        assert t.loc[j, "bank:b3"] == pytest.approx(data.parts[1][rows, 3].mean())
        assert t.loc[j, "retailer:x0"] == pytest.approx(data.parts[0][rows, 0].mean())


def test_profiles_enforce_min_size_on_noised_sizes() -> None:
    rng = np.random.default_rng(0)
    sizes = np.array([500.0, 8.0, 300.0]) + geometric_noise((3,), 1.0, rng)
    cents = [np.array([[0.0, 0.0], [0.5, 0.0], [5.0, 5.0]])]
    sums = {"guest": np.array([[500.0], [8.0], [600.0]])}
    prof = profile_segments(sizes, column_sums=sums, min_size=50, centroids=cents)
    assert len(prof.table) == 2 and prof.suppressed == []
    assert prof.table.loc[0, "size"] == pytest.approx(sizes[0] + sizes[1])
    assert prof.table.loc[0, "guest:x0"] == pytest.approx(508.0 / (sizes[0] + sizes[1]))
    supp = profile_segments(sizes, column_sums=sums, min_size=50, policy="suppress")
    assert supp.suppressed == [1] and len(supp.table) == 2
    with pytest.raises(ConfigError, match="centroids"):
        profile_segments(sizes, min_size=50)
    with pytest.raises(DataError, match="one value per segment"):
        profile_segments(sizes, positives=np.ones(2))
