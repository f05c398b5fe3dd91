"""Step 2 of grid k-means: a weighted k-means over the cells of the grid of local clusters.

Ding, Liu, Huang, Li, "K-Means Clustering with Distributed Dimensions", ICML 2016. Every party has
clustered its own columns into ``k_p`` local clusters (``vfl.segmentation.local``). A *cell* is a
combination ``c = (c_1, ..., c_P)`` of one local cluster id per party; its point is the concatenation
of the parties' local centroids ``(m_1[c_1], ..., m_P[c_P])`` and its weight the (DP-noised) number of
aligned rows whose local ids are exactly ``c``: the cross-tab of local cluster ids, computed by the
encrypted cross-tab protocol, which this module takes as input (:func:`cross_tab` is its plaintext
reference). A weighted k-means over the cells chooses ``K`` joint segments; a row's segment is the
segment of its cell.

Guarantee (sketch, squared Euclidean cost on the concatenated standardized columns): let ``q(x)`` be the
cell point of row ``x``. Then ``sum ||x - q(x)||^2 = sum_p cost_p`` (each party's local k-means cost)
``<= gamma * OPT`` when every party's local k-means is a ``gamma``-approximation with ``k_p >= K`` (the
optimal joint centres restricted to party p's columns are one ``K``-clustering of them). With
``||x - c||^2 <= 2 ||x - q(x)||^2 + 2 ||q(x) - c||^2`` a ``beta``-approximate weighted k-means on the
cells gives a constant-factor (``O(gamma * beta)``) approximation of the joint optimum. DP noise on the
counts adds an error proportional to the noise mass, which is small next to ``n`` when cells hold many rows.

Who computes what (the split form every function below follows). The squared distance from a cell to a
joint centroid ``mu_j = (mu_j^1, ..., mu_j^P)`` is ``sum_p w_p ||m_p[c_p] - mu_j^p||^2``: party p's term
depends only on its own local centroids and its own part of the joint centroids. So in the protocol

* party p keeps its local centroids and its part ``mu^p`` of the joint centroids and sends, per Lloyd
  iteration, the ``k_p x K`` table of its terms (:func:`party_distances`) to the coordinator (the guest,
  which holds the noised grid counts);
* the coordinator adds the terms per cell (:func:`combine_distances`), assigns cells, and returns to
  party p the ``k_p x K`` table of noised weight per (local cluster of p, segment)
  (:func:`party_marginal_weights`);
* party p updates ``mu^p`` as the weighted mean of its own local centroids (:func:`party_centroid_update`);
* k-means++ seeding and the reseeding of an empty segment work the same way: the coordinator picks
  cells (it has the weights and the combined distances) and tells each party the cell's local id
  ``c_p``; the party takes ``m_p[c_p]`` as its part of the new centre and returns its ``k_p x trials``
  distance table to the candidate centres.

No per-row value, label or distance is used. The coordinator learns the grid counts (already DP), the
cell -> segment map and each party's distance tables: aggregates, but since the joint centroid parts
are known weighted means of the local centroids, the tables let it reconstruct the configuration of
that party's local centroids up to a rotation (their pairwise distances; not which column is which,
never a row). Party p learns the per-(own local cluster, segment) noised weights. :func:`fit_grid`
runs all of it in one process.

Evaluating the segment of a row (:meth:`GridSegmentation.assign`) needs every party's local cluster id
of that row. No single party has them: if the hosts send their per-row local ids to the guest, the guest
can evaluate the lookup alone, but that releases to the guest the host's local cluster of every shared
customer (membership in a quantization of the host's columns). The private way is joint: each host sends
its local id per row as an encrypted one-hot vector and the guest selects, under encryption, the
indicator of the row's segment (``[[1{seg(i)=j}]] = sum_b 1{table[a_i, b] = j} [[1{l_h(i)=b}]]`` with two
parties, chained with more), so that only the segment id (or only encrypted segment indicators for
per-segment aggregates, see ``vfl.segmentation.profiles``) comes out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vfl.errors import ConfigError, DataError

#: Default noise threshold, in units of ``1 / epsilon``: cells whose noised count is at most
#: ``NOISE_THRESHOLD / epsilon`` get weight 0 (a two-sided geometric draw reaches 3 / epsilon with
#: probability about exp(-3) / 2, so most empty cells that noise made positive are dropped).
NOISE_THRESHOLD = 3.0

#: Largest grid (product of the k_p) accepted; the cross-tab releases a noised count for every cell.
MAX_CELLS = 1 << 20


def cross_tab(local_labels: Sequence[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """Plaintext reference of the cross-tab protocol: the number of rows in every cell, shape ``shape``."""
    labels = _check_labels(local_labels, shape)
    flat = np.ravel_multi_index(tuple(labels), tuple(shape))
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(tuple(shape)).astype(float)


# ----------------------------------------------------------------------------------------------
# The split Lloyd step: what each party computes and what the coordinator computes.


def party_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Party p: ``(m_p, K)`` squared distances from its points (local centroids) to its part of the segments."""
    points = np.asarray(points, dtype=float)
    centroids = np.asarray(centroids, dtype=float)
    d = (points**2).sum(axis=1)[:, None] - 2.0 * points @ centroids.T + (centroids**2).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def combine_distances(
    tables: Sequence[np.ndarray], index: Sequence[np.ndarray], party_weights: Sequence[float]
) -> np.ndarray:
    """Coordinator: ``(C, K)`` cell-to-segment distances from every party's ``(m_p, K)`` table."""
    total = None
    for table, idx, weight in zip(tables, index, party_weights, strict=True):
        term = weight * table[idx]
        total = term if total is None else total + term
    assert total is not None
    return total


def party_marginal_weights(
    index_p: np.ndarray, assignment: np.ndarray, weights: np.ndarray, m_p: int, n_segments: int
) -> np.ndarray:
    """Coordinator -> party p: ``(m_p, K)`` total cell weight per (point of p, segment)."""
    flat = index_p * n_segments + assignment
    return np.bincount(flat, weights=weights, minlength=m_p * n_segments).reshape(m_p, n_segments)


def party_centroid_update(points: np.ndarray, marginal: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Party p: its part of the segment centroids, the marginal-weighted mean of its points.

    A segment without weight keeps its previous centroid (the coordinator reseeds empty segments).
    """
    total = marginal.sum(axis=0)
    new = marginal.T @ points
    keep = total <= 0
    new[~keep] /= total[~keep, None]
    new[keep] = previous[keep]
    return new


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LloydResult:
    centroids: tuple[np.ndarray, ...]  # per party (K, d_p)
    assignment: np.ndarray  # (C,) segment of every weighted cell
    objective: float  # weighted sum of squared distances
    n_iter: int


def _candidate_distances(
    points: Sequence[np.ndarray],
    index: Sequence[np.ndarray],
    cells: np.ndarray,
    party_weights: Sequence[float],
) -> np.ndarray:
    """(C, len(cells)) distances from every cell to the points of the cells ``cells``."""
    tables = [party_distances(p, p[idx[cells]]) for p, idx in zip(points, index, strict=True)]
    return combine_distances(tables, index, party_weights)


def _kmeans_pp(
    points: Sequence[np.ndarray],
    index: Sequence[np.ndarray],
    weights: np.ndarray,
    k: int,
    party_weights: Sequence[float],
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Greedy weighted k-means++ (as scikit-learn): ``2 + log k`` candidates per centre, best kept."""
    n_cells = weights.shape[0]
    trials = 2 + int(math.log(k))
    chosen = [int(rng.choice(n_cells, p=weights / weights.sum()))]
    closest = _candidate_distances(points, index, np.array(chosen), party_weights)[:, 0]
    for _ in range(1, k):
        potential = weights * closest
        total = potential.sum()
        if total <= 0:  # every weighted cell coincides with a centre: take any weighted cell not chosen yet
            free = np.setdiff1d(np.flatnonzero(weights > 0), chosen)
            pick = int(rng.choice(free)) if free.size else int(rng.integers(n_cells))
        else:
            cand = rng.choice(n_cells, size=trials, p=potential / total)
            dist = _candidate_distances(points, index, cand, party_weights)
            new_closest = np.minimum(closest[:, None], dist)
            best = int(np.argmin((weights[:, None] * new_closest).sum(axis=0)))
            pick = int(cand[best])
        chosen.append(pick)
        closest = np.minimum(
            closest, _candidate_distances(points, index, np.array([pick]), party_weights)[:, 0]
        )
    sel = np.array(chosen)
    return [p[idx[sel]].copy() for p, idx in zip(points, index, strict=True)]


def weighted_lloyd(
    points: Sequence[np.ndarray],
    index: Sequence[np.ndarray],
    weights: np.ndarray,
    n_segments: int,
    *,
    party_weights: Sequence[float] | None = None,
    n_init: int = 10,
    max_iter: int = 100,
    seed: int = 0,
    init: Sequence[np.ndarray] | None = None,
) -> LloydResult:
    """Weighted k-means over ``C`` cells whose point is ``concat_p points[p][index[p][c]]``.

    ``points[p]`` is party p's ``(m_p, d_p)`` point table and ``index[p]`` the ``(C,)`` row of it each cell
    uses (for the grid, ``m_p = k_p`` local centroids and the index is the cell's local id). Every step
    is written in the split form of the module docstring. ``init`` (per-party ``(K, d_p)``) replaces the
    k-means++ restarts with a single warm start. The best of ``n_init`` restarts (lowest weighted
    objective) is returned; ties and restarts are fixed by ``seed``.
    """
    weights = np.asarray(weights, dtype=float)
    pw = [1.0] * len(points) if party_weights is None else [float(w) for w in party_weights]
    rng = np.random.default_rng(seed)
    m = [p.shape[0] for p in points]
    best: LloydResult | None = None
    starts = 1 if init is not None else n_init
    for _ in range(starts):
        if init is not None:
            mu = [np.asarray(c, dtype=float).copy() for c in init]
        else:
            mu = _kmeans_pp(points, index, weights, n_segments, pw, rng)
        prev = None
        n_iter = 0
        for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
            dist = combine_distances(
                [party_distances(p, c) for p, c in zip(points, mu, strict=True)], index, pw
            )
            assign = np.argmin(dist, axis=1)
            if prev is not None and np.array_equal(assign, prev):
                break
            prev = assign
            marg = [
                party_marginal_weights(idx, assign, weights, mp, n_segments)
                for idx, mp in zip(index, m, strict=True)
            ]
            mu = [party_centroid_update(p, w_p, c) for p, w_p, c in zip(points, marg, mu, strict=True)]
            empty = np.flatnonzero(marg[0].sum(axis=0) <= 0)
            if empty.size:  # reseed an empty segment at the cell that costs most where it is
                cost = weights * dist[np.arange(dist.shape[0]), assign]
                for j, cell in zip(empty, np.argsort(-cost)[: empty.size], strict=False):
                    for p_i in range(len(points)):
                        mu[p_i][j] = points[p_i][index[p_i][cell]]
                prev = None
        dist = combine_distances([party_distances(p, c) for p, c in zip(points, mu, strict=True)], index, pw)
        assign = np.argmin(dist, axis=1)
        objective = float((weights * dist[np.arange(dist.shape[0]), assign]).sum())
        if best is None or objective < best.objective - 1e-12 * max(1.0, abs(objective)):
            best = LloydResult(tuple(mu), assign, objective, n_iter)
    assert best is not None
    return best


@dataclass(frozen=True)
class GridSegmentation:
    """The joint segments: per-party centroid parts and the cell -> segment lookup table."""

    centroids: tuple[np.ndarray, ...]  # per party (K, d_p): party p's part of the joint centroids
    cell_segment: np.ndarray  # shape (k_1, ..., k_P): segment of every cell, nearest centroid
    weights: np.ndarray  # shape (k_1, ..., k_P): cell weights used (noised counts, dropped cells 0)
    party_weights: tuple[float, ...]
    objective: float  # weighted grid objective over the weighted cells
    n_iter: int

    @property
    def n_segments(self) -> int:
        return int(self.centroids[0].shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.cell_segment.shape)

    @property
    def segment_weights(self) -> np.ndarray:
        """Noised size of every segment as the grid sees it (sum of its cells' weights)."""
        return np.bincount(self.cell_segment.ravel(), weights=self.weights.ravel(), minlength=self.n_segments)

    def assign(self, local_labels: Sequence[np.ndarray]) -> np.ndarray:
        """Joint segment of every row from every party's local cluster id of that row (a table lookup).

        Needs all parties' local ids of a row together: see the module docstring for who may evaluate it.
        """
        labels = _check_labels(local_labels, self.shape)
        return self.cell_segment[tuple(labels)]


def fit_grid(
    local_centroids: Sequence[np.ndarray],
    counts: np.ndarray,
    n_segments: int,
    *,
    party_weights: Sequence[float] | None = None,
    epsilon: float | None = None,
    min_count: float | None = None,
    min_size: float | None = None,
    n_init: int = 10,
    max_iter: int = 100,
    seed: int = 0,
) -> GridSegmentation:
    """Choose ``n_segments`` joint segments by weighted k-means over the grid cells.

    ``local_centroids[p]`` is party p's ``(k_p, d_p)`` local centroid table (standardized units) and
    ``counts`` the noised cross-tab of shape ``(k_1, ..., k_P)``. Cells whose noised count is ``<=
    min_count`` get weight 0 (they take no part in the fit, but still get the nearest segment in the
    lookup table, since real rows may fall in them). ``min_count`` defaults to ``NOISE_THRESHOLD /
    epsilon`` when the counts' DP ``epsilon`` is given (thresholding is post-processing: no privacy
    cost), else 0. Why: every empty cell gets noise too, and on a large grid the positive draws add up
    to phantom weight far from the data (3 parties, 100k rows, ``epsilon = 0.1``: objective ratio 1.10
    with threshold 0, 1.047 with ``3 / epsilon``; at ``epsilon = 1`` the threshold changes less than 1 %). ``party_weights`` scale each party's distance term
    (default 1 each: every standardized column counts the same). ``min_size`` (the minimum segment
    size of the profiles) refuses a ``K`` that cannot give every segment that many rows.
    """
    cents = [np.asarray(c, dtype=float) for c in local_centroids]
    if not cents:
        raise ConfigError("segmentation needs at least one party's local centroids")
    for p, c in enumerate(cents):
        if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
            raise DataError(
                f"party {p}: local centroids must be a (k_p, d_p) table with d_p >= 1, got {c.shape}"
            )
        if not np.isfinite(c).all():
            raise DataError(f"party {p}: local centroids hold missing or infinite values")
    shape = tuple(c.shape[0] for c in cents)
    counts = np.asarray(counts, dtype=float)
    if counts.shape != shape:
        raise DataError(
            f"grid counts have shape {counts.shape}, but the local clusters make a grid of {shape}"
        )
    if not np.isfinite(counts).all():
        raise DataError("grid counts hold missing or infinite values")
    n_cells = int(np.prod(shape))
    if n_cells > MAX_CELLS:
        raise ConfigError(
            f"the grid has {n_cells} cells (more than {MAX_CELLS}); use fewer local clusters per party"
        )
    if not isinstance(n_segments, int | np.integer) or n_segments < 1:
        raise ConfigError(f"the number of segments K must be a positive integer, got {n_segments!r}")
    pw = (1.0,) * len(cents) if party_weights is None else tuple(float(w) for w in party_weights)
    if len(pw) != len(cents) or not all(np.isfinite(w) and w >= 0 for w in pw) or not any(w > 0 for w in pw):
        raise ConfigError(
            f"party_weights must be one non-negative weight per party ({len(cents)}), not all zero; got {party_weights}"
        )
    if epsilon is not None and not (np.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be a positive number, got {epsilon!r}")
    if min_count is None:
        min_count = NOISE_THRESHOLD / epsilon if epsilon is not None else 0.0
    weights = np.where(counts > min_count, counts, 0.0)
    kept = np.flatnonzero(weights.ravel() > 0)
    if n_segments > kept.size:
        raise ConfigError(
            f"K = {n_segments} segments but only {kept.size} grid cells have a noised count above {min_count:g}; "
            "lower K or use more local clusters per party"
        )
    total = float(weights.sum())
    if min_size is not None and n_segments * min_size > total:
        raise ConfigError(
            f"K = {n_segments} segments of at least {min_size:g} rows need {n_segments * min_size:g} rows, but the "
            f"grid holds about {total:.0f} (n / min_size = {total / min_size:.1f}); lower K or min_size"
        )
    index = [ix[kept] for ix in np.unravel_index(np.arange(n_cells), shape)]
    result = weighted_lloyd(
        cents, index, weights.ravel()[kept], n_segments,
        party_weights=pw, n_init=n_init, max_iter=max_iter, seed=seed,
    )  # fmt: skip
    return GridSegmentation(
        centroids=result.centroids,
        cell_segment=lookup_table(cents, result.centroids, pw),
        weights=weights,
        party_weights=pw,
        objective=result.objective,
        n_iter=result.n_iter,
    )


def lookup_table(
    local_centroids: Sequence[np.ndarray], centroids: Sequence[np.ndarray], party_weights: Sequence[float]
) -> np.ndarray:
    """Nearest segment of every cell of the full grid, from the parties' ``(k_p, K)`` distance tables."""
    n_parties = len(local_centroids)
    total = None
    for p, (loc, cen, w) in enumerate(zip(local_centroids, centroids, party_weights, strict=True)):
        shape = [1] * n_parties + [cen.shape[0]]
        shape[p] = loc.shape[0]
        term = w * party_distances(loc, cen).reshape(shape)
        total = term if total is None else total + term
    assert total is not None
    return np.argmin(total, axis=-1).astype(np.int64)


def _check_labels(local_labels: Sequence[np.ndarray], shape: Sequence[int]) -> list[np.ndarray]:
    labels = [np.asarray(lab) for lab in local_labels]
    if len(labels) != len(shape):
        raise DataError(f"expected local cluster ids from {len(shape)} parties, got {len(labels)}")
    n = labels[0].shape[0] if labels else 0
    for p, (lab, k) in enumerate(zip(labels, shape, strict=True)):
        if lab.ndim != 1 or lab.shape[0] != n:
            raise DataError(
                f"party {p}: local cluster ids must be one per aligned row ({n}), got shape {lab.shape}"
            )
        if not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"party {p}: local cluster ids must be integers, got dtype {lab.dtype}")
        if lab.size and (lab.min() < 0 or lab.max() >= k):
            raise DataError(
                f"party {p}: local cluster ids must be in 0..{k - 1}, found {lab.min()}..{lab.max()}"
            )
    return [lab.astype(np.int64) for lab in labels]
