"""Pure steps of the federated grid k-means that the ``segment`` protocol runs between parties.

* :func:`merge_small_clusters` (every party, locally): a local cluster of fewer than ``min_rows`` rows is
  dissolved into the nearest other local clusters before anything about it is computed for a peer, so
  no local cluster mean that crosses (as a distance) is close to one customer's values.
* :func:`squared_distances` (every host) and :func:`embed_distances` (the guest): the host sends only
  the ``k_h x k_h`` squared distances between its local cluster means; the guest rebuilds an isometric
  copy of those means (classical multidimensional scaling). The grid k-means only ever uses distances
  between local centroids and weighted means of them, which an isometry keeps, so the fit on the copy
  equals the fit on the host's real centroids (:func:`vfl.segmentation.grid.fit_grid`), up to rounding.
* :func:`pairwise_to_grid` (the guest, with 2+ hosts): the full grid ``k_g x k_h1 x ... `` cannot be
  counted from pairwise cross-tabs; it is estimated as ``n(g) prod_k n(g, h_k) / n(g)`` (the hosts'
  local clusters independent given the guest's). Exact with one host.
* :func:`segment_marginals` (the guest): the noised weight per (local cluster of one party, segment),
  the only result a host receives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vfl.errors import DataError
from vfl.segmentation.grid import party_distances
from vfl.segmentation.local import LocalClustering, by_size, nearest, settle

#: Standardized values are clipped at this many standard deviations before local k-means (and when a
#: segment model assigns new rows): it bounds what one customer adds to any mean that crosses.
CLIP_SIGMA = 5.0


def merge_small_clusters(local: LocalClustering, matrix: np.ndarray, min_rows: int) -> LocalClustering:
    """Dissolve local clusters below ``min_rows`` rows into the nearest remaining centroids.

    ``matrix`` is the standardized data the clustering was fitted on. After each dissolution the
    remaining clusters settle again (:func:`vfl.segmentation.local.settle`: centroids the means of their
    rows, every row in its nearest cluster), so the labels used in the job are what a segment model
    recomputes for the same rows; settling can shrink a cluster below ``min_rows``, which the next round
    dissolves. Clusters are re-numbered by size (largest first) as
    :func:`vfl.segmentation.local.cluster_locally` does.
    """
    labels = local.labels.copy()
    centroids = local.centroids.copy()
    while True:
        sizes = np.bincount(labels, minlength=centroids.shape[0])
        alive = np.flatnonzero(sizes >= min_rows)
        if alive.size == centroids.shape[0] or alive.size == 0:
            break
        kept = centroids[alive]
        labels, centroids = settle(matrix, nearest(matrix, kept), kept)
    labels, centroids = by_size(matrix, labels, centroids)
    inertia = float(((matrix - centroids[labels]) ** 2).sum())
    return LocalClustering(labels, centroids, inertia, local.scaler)


def squared_distances(points: np.ndarray) -> np.ndarray:
    """``(m, m)`` squared Euclidean distances between the rows of ``points``."""
    return party_distances(points, points)


def embed_distances(d2: np.ndarray) -> np.ndarray:
    """Points whose pairwise squared distances are ``d2`` (classical MDS; exact for Euclidean ``d2``)."""
    d2 = np.asarray(d2, dtype=float)
    if d2.ndim != 2 or d2.shape[0] != d2.shape[1] or not np.isfinite(d2).all():
        raise DataError(f"a distance table must be a finite square matrix, got shape {d2.shape}")
    m = d2.shape[0]
    j = np.eye(m) - np.full((m, m), 1.0 / m)
    b = -0.5 * j @ ((d2 + d2.T) / 2) @ j
    values, vectors = np.linalg.eigh(b)
    keep = values > 1e-9 * max(1.0, float(np.abs(values).max(initial=0.0)))
    if not keep.any():
        return np.zeros((m, 1))
    return vectors[:, keep] * np.sqrt(values[keep])


def pairwise_to_grid(tables: Sequence[np.ndarray]) -> np.ndarray:
    """Grid ``(k_g, k_1, ..., k_N)`` from the guest x host_k tables ``(k_g, k_k)`` (noised counts).

    ``n(g)`` is the mean of the tables' row sums; each host's conditional ``n(g, h_k) / n(g)`` uses its
    own table with negative noised counts clipped to 0. One table is returned unchanged.
    """
    tables = [np.asarray(t, dtype=float) for t in tables]
    if not tables:
        raise DataError("a grid needs at least one cross-tab")
    if len(tables) == 1:
        return tables[0]
    k_g = tables[0].shape[0]
    if any(t.ndim != 2 or t.shape[0] != k_g for t in tables):
        raise DataError("every cross-tab must have one row per guest local cluster")
    clipped = [np.maximum(t, 0.0) for t in tables]
    n_g = np.mean([t.sum(axis=1) for t in clipped], axis=0)
    grid = n_g.reshape((k_g,) + (1,) * len(tables))
    for k, t in enumerate(clipped):
        cond = t / np.maximum(t.sum(axis=1, keepdims=True), 1e-12)
        shape = [k_g] + [1] * len(tables)
        shape[k + 1] = t.shape[1]
        grid = grid * cond.reshape(shape)
    return grid


def segment_marginals(lookup: np.ndarray, weights: np.ndarray, axis: int, n_segments: int) -> np.ndarray:
    """``(k_axis, K)``: the total grid weight per (local cluster on ``axis``, segment); ``-1`` cells skipped."""
    lookup = np.asarray(lookup)
    weights = np.asarray(weights, dtype=float)
    local = np.indices(lookup.shape)[axis].ravel()
    seg = lookup.ravel()
    w = weights.ravel()
    keep = seg >= 0
    flat = local[keep] * n_segments + seg[keep]
    k_axis = lookup.shape[axis]
    return np.bincount(flat, weights=w[keep], minlength=k_axis * n_segments).reshape(k_axis, n_segments)


def segment_means(points: np.ndarray, marginal: np.ndarray) -> np.ndarray:
    """``(K, d)`` marginal-weighted means of a party's local centroids (NaN for a segment without weight)."""
    total = marginal.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (marginal.T @ points) / total[:, None]
