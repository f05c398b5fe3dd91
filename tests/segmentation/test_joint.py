"""Pure steps of the federated grid k-means (vfl.segmentation.joint) against numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from vfl.config import JobConfig, PartyConfig
from vfl.errors import ConfigError
from vfl.segmentation.grid import cross_tab, fit_grid
from vfl.segmentation.joint import (
    embed_distances,
    merge_small_clusters,
    pairwise_to_grid,
    segment_marginals,
    segment_means,
    squared_distances,
)
from vfl.segmentation.local import cluster_locally, standardize
from vfl.segmentation.synthetic import vertical_blobs


def test_embedding_keeps_every_distance_and_so_the_grid_fit():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(12, 5))
    emb = embed_distances(squared_distances(points))
    np.testing.assert_allclose(squared_distances(emb), squared_distances(points), atol=1e-8)
    guest = rng.normal(size=(6, 3))
    counts = rng.integers(0, 40, size=(6, 12)).astype(float)
    a = fit_grid([guest, points], counts, 4, seed=1)
    b = fit_grid([guest, emb], counts, 4, seed=1)
    np.testing.assert_array_equal(a.cell_segment, b.cell_segment)
    assert b.objective == pytest.approx(a.objective, rel=1e-9)


def test_pairwise_grid_is_exact_for_one_host_and_the_independence_product_for_more():
    rng = np.random.default_rng(1)
    g, h1, h2 = rng.integers(0, 3, 500), rng.integers(0, 4, 500), rng.integers(0, 2, 500)
    t1, t2 = cross_tab([g, h1], (3, 4)), cross_tab([g, h2], (3, 2))
    np.testing.assert_array_equal(pairwise_to_grid([t1]), t1)
    grid = pairwise_to_grid([t1, t2])
    n_g = t1.sum(axis=1)
    expected = np.einsum("g,gh,gk->ghk", n_g, t1 / n_g[:, None], t2 / n_g[:, None])
    np.testing.assert_allclose(grid, expected)
    np.testing.assert_allclose(grid.sum(axis=2), t1)


def test_small_local_clusters_are_dissolved():
    data = vertical_blobs(400, [3], centers=3, seed=2).parts[0]
    data = np.vstack([data, [[40.0, 40.0, 40.0]]])  # one outlier: its own local cluster
    x, _ = standardize(data)
    local = cluster_locally(x, 6, seed=0, standardized=True)
    assert local.sizes.min() < 20
    merged = merge_small_clusters(local, x, 20)
    assert merged.sizes.min() >= 20 and merged.k < local.k
    means = np.stack([x[merged.labels == c].mean(axis=0) for c in range(merged.k)])
    np.testing.assert_allclose(merged.centroids, means, atol=1e-12)


def test_dissolving_leaves_every_row_in_its_nearest_remaining_cluster():
    """After dissolving, the remaining clusters settle: every row's label is its nearest centroid (what a
    segment model recomputes for it) and every centroid the mean of its rows."""
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=2000, centers=6, cluster_std=2.5, n_features=3, random_state=5)
    local = cluster_locally(x, 24, seed=0, standardized=True)
    merged = merge_small_clusters(local, x, 70)
    assert merged.k < local.k and merged.sizes.min() >= 70
    brute = ((x[:, None, :] - merged.centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(merged.labels, brute)
    means = np.stack([x[merged.labels == c].mean(axis=0) for c in range(merged.k)])
    np.testing.assert_allclose(merged.centroids, means, atol=1e-9)


def test_marginals_and_means_against_numpy():
    lookup = np.array([[0, 1, -1], [1, 1, 0]])
    weights = np.array([[2.0, 3.0, 5.0], [1.0, 4.0, 6.0]])
    m0 = segment_marginals(lookup, weights, 0, 2)
    np.testing.assert_allclose(m0, [[2.0, 3.0], [6.0, 5.0]])
    m1 = segment_marginals(lookup, weights, 1, 2)
    np.testing.assert_allclose(m1, [[2.0, 1.0], [0.0, 7.0], [6.0, 0.0]])
    points = np.array([[0.0], [1.0]])
    np.testing.assert_allclose(segment_means(points, m0), [[6 / 8], [5 / 8]])


def test_segment_section_of_job_toml_and_policy_of_party_toml(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nid = "s1"\nkind = "segment"\n[segment]\nk = 5\noutcome = "buy"\nmembership = "guest"\n'
    )
    options = JobConfig.load(job).options("segment")
    assert options.k == 5 and options.outcome == "buy" and options.membership == "guest"
    job.write_text('[job]\nid = "s1"\nkind = "segment"\n[segment]\nk = 5\nnoise = false\n')
    with pytest.raises(ConfigError, match=r"\[segment\].*noise"):
        JobConfig.load(job)
    job.write_text('[job]\nid = "s1"\nkind = "segment"\n[psi]\nreveal = "guest-only"\n')
    with pytest.raises(ConfigError, match="segment job needs reveal"):
        JobConfig.load(job)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "party.toml").write_text(
        '[party]\nid = "bank"\nrole = "host"\n[network]\nlisten = "127.0.0.1:9000"\n'
        '[data]\npath = "d.csv"\n[segment]\nrelease_membership = true\n'
    )
    policy = PartyConfig.load(ws).segment_policy
    assert policy.release_membership and not policy.share_means
    (ws / "party.toml").write_text(
        '[party]\nid = "bank"\nrole = "host"\n[network]\nlisten = "127.0.0.1:9000"\n'
        '[data]\npath = "d.csv"\n[segment]\nrelease = true\n'
    )
    with pytest.raises(ConfigError, match=r"\[segment\]"):
        PartyConfig.load(ws)
