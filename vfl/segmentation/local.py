"""Step 1 of grid k-means, run by every party on its own columns only: standardize, then k-means.

Nothing here leaves the party. The party keeps its scaler, its local cluster id per aligned row and
its local centroids (in standardized units); the grid step (``vfl.segmentation.grid``) later needs
only the *count* of rows in every combination of local cluster ids (the noised cross-tab) and, inside
each party, that party's own centroids.

Number of local clusters ``k_p`` (:func:`default_local_k`):
``k_p = max(K, min(4 K, floor((n / min_mean_cell) ** (1 / P))))`` with ``min_mean_cell = 5``: as many
local clusters as keep on average at least 5 rows per grid cell (the grid has ``k_p ** P`` cells), never
fewer than ``K`` and at most ``4 K``. Why (measured, ``epsilon = 1`` two-sided geometric noise per cell,
marketing-like data, K = 8): more local clusters make each party's quantization finer and the grid
objective approaches the centralized one (2 parties, 100k rows: ratio 1.114 / 1.075 / 1.049 / 1.037 for
``k_p`` = 8 / 16 / 32 / 64; 2k rows: 1.095 / 1.059 / 1.049 for 8 / 16 / 24), but every cell carries
noise of its own, so once cells hold about one row the noise wins (3 parties, 5k rows: 1.025 at
``k_p = 12``, 1.042 at 16). The cap ``4 K`` bounds the local k-means time (linear in ``k_p``) and the
size of what crosses (``k_p x K`` distance tables, ``k_p ** P`` noised counts) for a few per cent of
objective. Fewer cells at small ``epsilon`` did not pay (``min_mean_cell = 5 / epsilon`` at ``epsilon =
0.1`` was worse in 8 of 12 settings); the grid step's noise threshold handles the noise instead, with one
known weak spot: 3 parties, ~3400 cells, 20k rows at ``epsilon = 0.1`` (one seed in three at 1.40,
phantom cells). ``k_p >= K`` is what
the approximation guarantee of Ding et al. (ICML 2016) assumes: each party's optimal ``K``-clustering of
its own columns costs at most the part of the optimal joint clustering that falls on those columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from vfl.errors import ConfigError, DataError

#: Default minimum of the mean number of rows per grid cell when choosing ``k_p``.
MIN_MEAN_CELL = 5.0
#: Default cap of ``k_p`` as a multiple of ``K``.
MAX_LOCAL_FACTOR = 4


def as_matrix(data: pd.DataFrame | np.ndarray, *, party: str = "party") -> tuple[np.ndarray, list[str]]:
    """``data`` as a float64 matrix and its column names; refuses text, missing and infinite values."""
    if isinstance(data, pd.DataFrame):
        names = [str(c) for c in data.columns]
        if not names:
            raise DataError(f"{party} has no columns to cluster; offer at least one numeric column")
        bad = [
            str(c)
            for c in data.columns
            if not (pd.api.types.is_numeric_dtype(data[c]) or pd.api.types.is_bool_dtype(data[c]))
        ]
        if bad:
            raise DataError(
                f"{party}: column(s) {', '.join(map(repr, bad))} are not numeric; encode or drop them before "
                "segmentation (vfl.data.Preprocessor one-hot encodes short text columns)"
            )
        matrix = data.to_numpy(dtype=float, na_value=np.nan)
    else:
        arr = np.asarray(data)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise DataError(f"{party}: expected a table (rows x columns), got an array of shape {arr.shape}")
        names = [f"x{i}" for i in range(arr.shape[1])]
        if arr.shape[1] == 0:
            raise DataError(f"{party} has no columns to cluster; offer at least one numeric column")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise DataError(
                f"{party}: the data is not numeric (dtype {arr.dtype}); encode or drop text columns first"
            )
        matrix = arr.astype(float)
    if matrix.shape[0] == 0:
        raise DataError(f"{party} has no rows to cluster")
    bad_cols = [names[j] for j in np.flatnonzero(~np.isfinite(matrix).all(axis=0))]
    if bad_cols:
        raise DataError(
            f"{party}: column(s) {', '.join(map(repr, bad_cols))} have missing or infinite values; impute them "
            "first (vfl.data.Preprocessor)"
        )
    return matrix, names


def group_sums(labels: np.ndarray, matrix: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, d)`` column sums of ``matrix`` over the rows of every group id in ``labels``."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    return np.stack(
        [np.bincount(labels, weights=matrix[:, j], minlength=n_groups) for j in range(matrix.shape[1])],
        axis=1,
    ).reshape(n_groups, matrix.shape[1])


@dataclass(frozen=True)
class Standardizer:
    """Per-column mean and standard deviation, fitted on the party's aligned rows."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, matrix: np.ndarray, names: Sequence[str]) -> Standardizer:
        mean = matrix.mean(axis=0)
        std = matrix.std(axis=0)
        # A constant column carries no information; it becomes all zeros instead of a division by zero.
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(names), mean, std)

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        return (matrix - self.mean) / self.std

    def inverse(self, matrix: np.ndarray) -> np.ndarray:
        """Standardized values (e.g. centroids or segment means) back in the original units."""
        return np.asarray(matrix) * self.std + self.mean


def standardize(data: pd.DataFrame | np.ndarray, *, party: str = "party") -> tuple[np.ndarray, Standardizer]:
    """Standardized copy of ``data`` (mean 0, standard deviation 1 per column) and its scaler."""
    matrix, names = as_matrix(data, party=party)
    scaler = Standardizer.fit(matrix, names)
    return scaler.transform(matrix), scaler


def default_local_k(
    n_segments: int,
    n_parties: int,
    n_rows: int,
    *,
    min_mean_cell: float = MIN_MEAN_CELL,
    max_factor: int = MAX_LOCAL_FACTOR,
) -> int:
    """``k_p = max(K, min(max_factor K, floor((n_rows / min_mean_cell) ** (1 / n_parties))))``, at most ``n_rows``."""
    if n_segments < 1:
        raise ConfigError(f"the number of segments must be at least 1, got {n_segments}")
    if n_parties < 1:
        raise ConfigError(f"segmentation needs at least one party, got {n_parties}")
    fit = int(np.floor((n_rows / min_mean_cell) ** (1.0 / n_parties) + 1e-9)) if n_rows > 0 else 0
    return int(max(1, min(n_rows, max(n_segments, min(max_factor * n_segments, fit)))))


@dataclass(frozen=True)
class LocalClustering:
    """One party's local k-means: kept by that party."""

    labels: np.ndarray  # (n,) int: local cluster id of every aligned row
    centroids: np.ndarray  # (k_p, d_p) in standardized units
    inertia: float  # sum of squared distances of the standardized rows to their local centroid
    scaler: Standardizer | None  # None when the data came in already standardized

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.k)


def nearest(matrix: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (squared Euclidean, the first on a tie) of every row of ``matrix``.

    Computed column by column with elementwise operations only, so a row's answer does not depend on
    which other rows are assigned with it (a matrix product's rounding can depend on the batch): training
    (:func:`settle`) and scoring (``SegmentModel.local_clusters``) give a row the same cluster.
    """
    matrix = np.asarray(matrix, dtype=float)
    centroids = np.asarray(centroids, dtype=float)
    n = matrix.shape[0]
    columns = [np.ascontiguousarray(matrix[:, j]) for j in range(matrix.shape[1])]
    best = np.full(n, np.inf)
    arg = np.zeros(n, dtype=np.int64)
    dist, term = np.empty(n), np.empty(n)
    for i, centre in enumerate(centroids):
        dist.fill(0.0)
        for column, value in zip(columns, centre, strict=True):
            np.subtract(column, value, out=term)
            np.multiply(term, term, out=term)
            dist += term
        closer = dist < best
        best[closer] = dist[closer]
        arg[closer] = i
    return arg


def settle(
    matrix: np.ndarray, labels: np.ndarray, fallback: np.ndarray, rounds: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd steps from scikit-learn's result to the fixed point: every centroid the exact mean of its
    rows (the grid step relies on cluster means) and every row's label its nearest centroid
    (:func:`nearest`, which is how ``SegmentModel.local_clusters`` assigns rows later -- so a training row
    scored again gets the cluster it had). scikit-learn stops at a tolerance, where a few boundary rows
    can disagree. ``fallback``: the centroid of a cluster that lost all its rows."""
    k = len(fallback)
    for _ in range(rounds):
        sizes = np.bincount(labels, minlength=k)
        centers = np.where(
            sizes[:, None] > 0, group_sums(labels, matrix, k) / np.maximum(sizes, 1)[:, None], fallback
        )
        closest = nearest(matrix, centers)
        if np.array_equal(closest, labels):
            break
        labels = closest
    return closest, centers  # nearest to the centers returned, converged or not


def by_size(matrix: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clusters re-numbered by size (largest first, so ids do not depend on scikit-learn's internal
    order); every row's label is then recomputed as its nearest re-numbered centroid, so that even a row
    exactly between two centroids gets the cluster scoring will give it."""
    k = centroids.shape[0]
    order = np.lexsort((np.arange(k), -np.bincount(labels, minlength=k)))
    centroids = centroids[order]
    return nearest(matrix, centroids), centroids


def cluster_locally(
    data: pd.DataFrame | np.ndarray,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    standardized: bool = False,
    party: str = "party",
) -> LocalClustering:
    """Standardize the party's columns (unless ``standardized``) and cluster them into ``k`` clusters.

    scikit-learn ``KMeans`` (Lloyd, k-means++ init, ``n_init`` restarts), seeded, so the same data and
    seed give the same labels and centroids.
    """
    if standardized:
        matrix, _ = as_matrix(data, party=party)
        scaler = None
    else:
        matrix, scaler = standardize(data, party=party)
    if not 1 <= k <= matrix.shape[0]:
        raise ConfigError(f"{party}: cannot make {k} local clusters from {matrix.shape[0]} rows")
    model = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(matrix)
    labels, centers = settle(matrix, model.labels_.astype(np.int64), model.cluster_centers_)
    labels, centers = by_size(matrix, labels, centers)
    inertia = float(((matrix - centers[labels]) ** 2).sum())
    return LocalClustering(labels=labels, centroids=centers, inertia=inertia, scaler=scaler)
