import numpy as np
import pandas as pd
import pytest

from vfl.errors import ConfigError, DataError
from vfl.segmentation.local import cluster_locally, default_local_k, standardize


def test_standardize_and_inverse() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(500, 3))
    x[:, 2] = 7.0  # constant column: all zeros, no division by zero
    z, scaler = standardize(x)
    np.testing.assert_allclose(z[:, :2].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1, atol=1e-12)
    assert np.all(z[:, 2] == 0)
    np.testing.assert_allclose(scaler.inverse(z), x)


def test_local_kmeans_is_deterministic_and_centroids_are_means() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(800, 4)), columns=list("abcd"))
    a = cluster_locally(frame, 6, seed=3)
    b = cluster_locally(frame, 6, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    z, _ = standardize(frame)
    for j in range(6):
        np.testing.assert_allclose(a.centroids[j], z[a.labels == j].mean(axis=0))
    assert list(a.sizes) == sorted(a.sizes, reverse=True)
    assert a.scaler is not None and a.scaler.names == ("a", "b", "c", "d")


def test_default_local_k_rule() -> None:
    assert default_local_k(8, 2, 100_000) == 32  # capped at 4K
    assert default_local_k(8, 2, 2_000) == 20  # (2000 / 5) ** (1/2) = 20
    assert default_local_k(8, 3, 5_000) == 10  # (5000 / 5) ** (1/3) = 10
    assert default_local_k(8, 3, 1_000) == 8  # never below K
    assert default_local_k(8, 2, 100_000, max_factor=2) == 16
    assert default_local_k(8, 2, 5) == 5  # never above the rows
    with pytest.raises(ConfigError, match="segments"):
        default_local_k(0, 2, 100)


def test_bad_inputs_name_the_problem() -> None:
    frame = pd.DataFrame({"age": [30, 40, 50], "city": ["a", "b", "c"]})
    with pytest.raises(DataError, match="'city'.*not numeric"):
        cluster_locally(frame, 2, party="bank")
    with pytest.raises(DataError, match="bank has no columns"):
        cluster_locally(pd.DataFrame(index=range(3)), 2, party="bank")
    with pytest.raises(DataError, match="no columns"):
        cluster_locally(np.zeros((3, 0)), 2)
    with pytest.raises(DataError, match="'age'.*missing"):
        cluster_locally(pd.DataFrame({"age": [1.0, np.nan, 3.0]}), 2)
    with pytest.raises(DataError, match="not numeric"):
        cluster_locally(np.array([["a", "b"], ["c", "d"]]), 1)
    with pytest.raises(ConfigError, match="cannot make 5 local clusters from 3 rows"):
        cluster_locally(pd.DataFrame({"age": [1.0, 2.0, 3.0]}), 5)


def test_every_training_row_is_in_its_nearest_local_cluster():
    """The labels a segment job uses are what scoring recomputes (nearest centroid), even where
    scikit-learn stopped at its tolerance with boundary rows on the other side (overlapping blobs)."""
    from sklearn.datasets import make_blobs

    from vfl.segmentation.grid import party_distances

    x, _ = make_blobs(n_samples=3000, centers=12, cluster_std=3.0, n_features=4, random_state=3)
    for seed in range(3):
        local = cluster_locally(x, 16, seed=seed, standardized=True, n_init=1, max_iter=5)
        nearest = np.argmin(party_distances(x, local.centroids), axis=1)
        np.testing.assert_array_equal(local.labels, nearest)
        sizes = np.bincount(local.labels, minlength=16)
        means = np.stack([x[local.labels == c].mean(axis=0) for c in range(16) if sizes[c]])
        np.testing.assert_allclose(local.centroids[sizes > 0], means, atol=1e-9)


def test_nearest_centroid_against_numpy_ties_first_and_the_same_in_any_batch() -> None:
    from vfl.segmentation.local import nearest

    rng = np.random.default_rng(4)
    x = rng.normal(size=(5000, 5))
    c = rng.normal(size=(17, 5))
    got = nearest(x, c)
    np.testing.assert_array_equal(got, ((x[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1))
    rows = rng.permutation(len(x))[:37]
    np.testing.assert_array_equal(nearest(x[rows], c), got[rows])  # a row's cluster is its own
    ties = nearest(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]))
    np.testing.assert_array_equal(ties, [0, 0])  # equidistant: the first centroid, as argmin
