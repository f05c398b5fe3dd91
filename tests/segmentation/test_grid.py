import numpy as np
import pytest
from sklearn.cluster import KMeans

from vfl.errors import ConfigError, DataError
from vfl.segmentation.grid import cross_tab, fit_grid, lookup_table, weighted_lloyd
from vfl.segmentation.quality import joined
from vfl.segmentation.synthetic import marketing_like, vertical_blobs

from .helpers import geometric_noise, quality, segment


@pytest.mark.parametrize("columns", [[4, 4], [3, 3, 3]])
def test_well_separated_blobs_at_epsilon_one(columns: list[int]) -> None:
    data = vertical_blobs(4000, columns, centers=8, cluster_std=1.0, seed=0)
    _, _, labels = segment(data.parts, 8, epsilon=1.0)
    q = quality(data.parts, labels, 8)
    assert q.ratio <= 1.15
    assert q.ari >= 0.9


def test_overlapping_blobs_three_parties() -> None:
    data = vertical_blobs(6000, [3, 3, 2], centers=6, cluster_std=2.5, seed=4)
    _, _, labels = segment(data.parts, 6, epsilon=1.0)
    assert quality(data.parts, labels, 6).ratio <= 1.15


@pytest.mark.parametrize("seed", [0, 1])
def test_marketing_like_at_epsilon_one(seed: int) -> None:
    data = marketing_like(20_000, seed=seed)
    _, _, labels = segment(data.parts, 8, epsilon=1.0, seed=seed)
    assert quality(data.parts, labels, 8, seed=seed).ratio <= 1.15


def test_small_epsilon_needs_the_noise_threshold() -> None:
    data = vertical_blobs(5000, [3, 3, 3], centers=8, cluster_std=1.0, seed=0)
    grid, locs, _ = segment(data.parts, 8, epsilon=None)
    counts = grid.weights + geometric_noise(grid.shape, 0.1, np.random.default_rng(7))
    cents = [loc.centroids for loc in locs]
    labels = [loc.labels for loc in locs]
    thresholded = fit_grid(cents, counts, 8, epsilon=0.1)  # drops cells at or below 3 / epsilon = 30
    assert quality(data.parts, thresholded.assign(labels), 8).ratio <= 1.15
    assert (thresholded.weights[(counts > 0) & (counts <= 30)] == 0).all()
    assert fit_grid(cents, counts, 8).weights.sum() > thresholded.weights.sum()


def test_marketing_like_three_parties_at_epsilon_one() -> None:
    data = marketing_like(20_000, seed=2)
    host = data.parts[1]
    parts = [data.parts[0], host[:, :4], host[:, 4:]]  # the bank's columns split between two hosts
    _, _, labels = segment(parts, 8, epsilon=1.0)
    assert quality(parts, labels, 8).ratio <= 1.15


def test_split_lloyd_equals_weighted_kmeans_on_joined_cell_points() -> None:
    rng = np.random.default_rng(2)
    cents = [rng.normal(size=(6, 3)), rng.normal(size=(5, 2))]
    idx = [ix.ravel() for ix in np.meshgrid(np.arange(6), np.arange(5), indexing="ij")]
    w = rng.integers(1, 50, size=30).astype(float)
    points = np.hstack([cents[0][idx[0]], 2.0 * cents[1][idx[1]]])  # party weight 4 = scale 2
    init_cells = np.array([0, 7, 13, 29])
    init = [cents[0][idx[0][init_cells]], cents[1][idx[1][init_cells]]]
    ours = weighted_lloyd(cents, idx, w, 4, party_weights=[1.0, 4.0], init=init, max_iter=300)
    ref = KMeans(4, init=points[init_cells], n_init=1, max_iter=300, tol=0).fit(points, sample_weight=w)
    np.testing.assert_array_equal(ours.assignment, ref.labels_)
    np.testing.assert_allclose(np.hstack([ours.centroids[0], 2.0 * ours.centroids[1]]), ref.cluster_centers_)
    np.testing.assert_allclose(ours.objective, ref.inertia_, rtol=1e-9)


def test_fit_is_seeded_and_assign_is_a_lookup() -> None:
    data = vertical_blobs(3000, [2, 2], centers=4, cluster_std=1.5, seed=1)
    g1, locs, labels = segment(data.parts, 4, seed=5)
    g2, _, labels2 = segment(data.parts, 4, seed=5)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(g1.cell_segment, g2.cell_segment)
    a, b = locs[0].labels, locs[1].labels
    np.testing.assert_array_equal(labels, g1.cell_segment[a, b])
    assert g1.cell_segment.shape == (locs[0].k, locs[1].k)
    # every cell, weighted or not, goes to its nearest joint centroid
    np.testing.assert_array_equal(
        g1.cell_segment, lookup_table([loc.centroids for loc in locs], g1.centroids, g1.party_weights)
    )
    assert g1.segment_weights.sum() == pytest.approx(g1.weights.sum())


def test_non_positive_cells_are_dropped_but_still_assigned() -> None:
    cents = [np.array([[0.0], [10.0], [5.0]]), np.array([[0.0], [10.0]])]
    counts = np.array([[100.0, -3.0], [0.0, 100.0], [2.0, 0.0]])
    g = fit_grid(cents, counts, 2, seed=0)
    assert g.weights[0, 1] == 0 and g.weights[1, 0] == 0
    assert g.cell_segment[0, 0] != g.cell_segment[1, 1]
    assert g.assign([np.array([0, 1, 0]), np.array([1, 0, 0])]).shape == (3,)
    with pytest.raises(ConfigError, match="K = 3 segments but only 2 grid cells"):
        fit_grid(cents, counts, 3, min_count=2.0)


def test_party_weight_zero_ignores_that_party() -> None:
    data = vertical_blobs(3000, [2, 2], centers=3, cluster_std=1.0, seed=7)
    _, locs, _ = segment(data.parts, 3, local_k=6)
    counts = cross_tab([loc.labels for loc in locs], [6, 6])
    g = fit_grid([loc.centroids for loc in locs], counts, 3, party_weights=[1.0, 0.0], seed=0)
    # the segment depends on party 0's local cluster only
    assert all(len(set(row)) == 1 for row in g.cell_segment)


def test_bad_configuration_and_data() -> None:
    cents = [np.zeros((2, 1)) + [[0.0], [1.0]], np.zeros((2, 1)) + [[0.0], [1.0]]]
    counts = np.full((2, 2), 50.0)
    with pytest.raises(ConfigError, match="K = 5 segments but only 4 grid cells"):
        fit_grid(cents, counts, 5)
    with pytest.raises(ConfigError, match="n / min_size = 2.0"):
        fit_grid(cents, counts, 3, min_size=100)
    with pytest.raises(DataError, match="shape"):
        fit_grid(cents, np.ones((2, 3)), 2)
    with pytest.raises(DataError, match="party 1.*d_p >= 1"):
        fit_grid([cents[0], np.zeros((2, 0))], counts, 2)
    with pytest.raises(ConfigError, match="party_weights"):
        fit_grid(cents, counts, 2, party_weights=[1.0])
    with pytest.raises(ConfigError, match="positive integer"):
        fit_grid(cents, counts, 0)
    with pytest.raises(DataError, match="missing or infinite"):
        fit_grid(cents, np.array([[1.0, np.nan], [1.0, 1.0]]), 2)
    with pytest.raises(ConfigError, match="epsilon"):
        fit_grid(cents, counts, 2, epsilon=0)
    g = fit_grid(cents, counts, 2)
    with pytest.raises(DataError, match="0..1"):
        g.assign([np.array([0, 2]), np.array([0, 1])])
    with pytest.raises(DataError, match="from 2 parties"):
        g.assign([np.array([0, 1])])


def test_noise_sampler_is_symmetric_with_the_right_scale() -> None:
    noise = geometric_noise((200_000,), 1.0, np.random.default_rng(0))
    alpha = np.exp(-1.0)
    assert abs(noise.mean()) < 0.02
    assert noise.var() == pytest.approx(2 * alpha / (1 - alpha) ** 2, rel=0.03)


def test_joined_weights() -> None:
    a, b = np.ones((2, 1)), np.ones((2, 2))
    np.testing.assert_allclose(joined([a, b], [4.0, 1.0]), [[2, 1, 1], [2, 1, 1]])
