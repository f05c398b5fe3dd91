"""Quality of a joint segmentation, measured where all columns are available (tests, benchmarks, audits
on synthetic or consented data): never part of a federated run.

* :func:`kmeans_objective`: the k-means objective of an *assignment* on the joined data: the sum of
  squared distances of every row to the mean of its segment (the best centroids for that assignment).
* :func:`centralized_kmeans`: scikit-learn ``KMeans`` on the joined data, the reference.
* :func:`compare`: objective, the reference objective, their ratio and the adjusted Rand index.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from vfl.segmentation.local import group_sums


def joined(parts: Sequence[np.ndarray], party_weights: Sequence[float] | None = None) -> np.ndarray:
    """The parties' (standardized) columns side by side, each party scaled by ``sqrt(weight)``."""
    pw = [1.0] * len(parts) if party_weights is None else list(party_weights)
    return np.hstack([np.sqrt(w) * np.asarray(p, dtype=float) for p, w in zip(parts, pw, strict=True)])


def kmeans_objective(data: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of the rows of ``data`` to the mean of their segment in ``labels``."""
    data = np.asarray(data, dtype=float)
    labels = np.asarray(labels)
    _, labels = np.unique(labels, return_inverse=True)
    k = int(labels.max()) + 1 if labels.size else 0
    sizes = np.bincount(labels, minlength=k).astype(float)
    sums = group_sums(labels, data, k)
    # sum ||x - mean||^2 = sum ||x||^2 - sum_j ||S_j||^2 / n_j
    return float(max(0.0, (data**2).sum() - ((sums**2).sum(axis=1) / sizes).sum()))


@dataclass(frozen=True)
class Centralized:
    labels: np.ndarray
    objective: float
    seconds: float


def centralized_kmeans(data: np.ndarray, n_segments: int, *, seed: int = 0, n_init: int = 10) -> Centralized:
    """scikit-learn ``KMeans`` (k-means++, ``n_init`` restarts) on the joined data."""
    start = time.perf_counter()
    model = KMeans(n_clusters=n_segments, n_init=n_init, random_state=seed).fit(data)
    seconds = time.perf_counter() - start
    labels = model.labels_.astype(np.int64)
    return Centralized(labels, kmeans_objective(data, labels), seconds)


@dataclass(frozen=True)
class Quality:
    objective: float  # of the assignment under test
    reference_objective: float  # of centralized KMeans on the same joined data
    ratio: float  # objective / reference_objective (>= 1 means worse than centralized)
    ari: float  # adjusted Rand index against the centralized labels


def compare(data: np.ndarray, labels: np.ndarray, reference: Centralized) -> Quality:
    objective = kmeans_objective(data, labels)
    ratio = objective / reference.objective if reference.objective > 0 else float("inf")
    return Quality(
        objective, reference.objective, ratio, float(adjusted_rand_score(reference.labels, labels))
    )


def adjusted_rand(labels: np.ndarray, reference_labels: np.ndarray) -> float:
    return float(adjusted_rand_score(reference_labels, labels))
