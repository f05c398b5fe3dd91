"""Segment profiles from per-segment aggregates, with a minimum segment size.

Inputs are aggregates only, per segment ``j``:

* the noised size ``n_j`` (e.g. the sum of the segment's grid cell weights,
  ``GridSegmentation.segment_weights``, or a noised count from the encrypted-indicator protocol);
* at the guest, the noised number of positive outcomes ``y_j``;
* per party, the noised sums of that party's own columns over the segment's rows. In the protocol a
  party gets them without learning which rows are in which segment: the guest holds the encrypted
  segment indicators ``[[1{seg(i) = j}]]`` of every row (from the joint lookup, ``vfl.segmentation.grid``),
  sends them to the party, which computes ``X_p^T [[1{seg = j}]]`` (the same multi-exponentiation as the
  LR gradient), masks it, and the arbiter decrypts and adds the DP noise before the masked value goes
  back. :func:`segment_sums` is the plaintext reference of that product.

Minimum size (:func:`enforce_min_size`), decided on the *noised* sizes only (post-processing, no extra
privacy cost): with ``policy="merge"`` (default) the smallest segment below ``min_size`` is merged into
the nearest other segment (squared distance between the joint centroids, size-weighted centroid of the
union), repeated until every segment has at least ``min_size`` rows; sums and counts are additive, so a
merged segment's profile is exact. With ``policy="suppress"`` segments below ``min_size`` are dropped:
their rows get segment ``-1`` ("not profiled") and no figure about them is released. Surviving segments
are re-numbered ``0..K'-1`` in their original order; ``mapping[old] -> new`` also re-maps a lookup
table (``mapping[grid.cell_segment]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vfl.errors import ConfigError, DataError
from vfl.segmentation.local import group_sums


def segment_sums(segments: np.ndarray, values: np.ndarray, n_segments: int) -> np.ndarray:
    """Plaintext reference: ``(K, d)`` sums of ``values`` over the rows of every segment (``-1`` rows skipped)."""
    segments = np.asarray(segments)
    keep = segments >= 0
    return group_sums(segments[keep], np.asarray(values, dtype=float)[keep], n_segments)


def enforce_min_size(
    sizes: np.ndarray,
    min_size: float,
    *,
    centroids: Sequence[np.ndarray] | None = None,
    party_weights: Sequence[float] | None = None,
    policy: str = "merge",
) -> np.ndarray:
    """``mapping[old segment] -> new segment`` (``-1``: suppressed) so that every segment has ``>= min_size``."""
    sizes = np.asarray(sizes, dtype=float)
    k = sizes.shape[0]
    if policy not in ("merge", "suppress"):
        raise ConfigError(f"min-size policy must be 'merge' or 'suppress', got {policy!r}")
    if min_size < 0 or not np.isfinite(min_size):
        raise ConfigError(f"min_size must be a non-negative number, got {min_size!r}")
    if policy == "suppress":
        keep = sizes >= min_size
        mapping = np.full(k, -1, dtype=np.int64)
        mapping[keep] = np.arange(int(keep.sum()))
        return mapping
    if centroids is None:
        raise ConfigError(
            "merging small segments needs the segment centroids (per party) to find the nearest"
        )
    if float(np.maximum(sizes, 0).sum()) < min_size:
        raise DataError(
            f"the whole audience (about {max(sizes.sum(), 0):.0f} rows) is smaller than the minimum segment size "
            f"{min_size:g}; no segment can be released"
        )
    pw = [1.0] * len(centroids) if party_weights is None else list(party_weights)
    joint = np.hstack([np.sqrt(w) * np.asarray(c, dtype=float) for c, w in zip(centroids, pw, strict=True)])
    if joint.shape[0] != k:
        raise DataError(f"{k} segment sizes but {joint.shape[0]} segment centroids")
    size = np.maximum(sizes, 0.0).copy()
    owner = np.arange(k)  # owner[j]: the active segment j was merged into (itself while active)
    active = list(range(k))
    while len(active) > 1:
        small = min(active, key=lambda j: (size[j], j))
        if size[small] >= min_size:
            break
        others = [j for j in active if j != small]
        dist = ((joint[others] - joint[small]) ** 2).sum(axis=1)
        target = others[int(np.argmin(dist))]
        total = size[target] + size[small]
        if total > 0:
            joint[target] = (size[target] * joint[target] + size[small] * joint[small]) / total
        size[target] = total
        owner[owner == small] = target
        active.remove(small)
    new_id = {old: i for i, old in enumerate(active)}
    return np.array([new_id[o] for o in owner], dtype=np.int64)


def merge_aggregates(values: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Per-segment sums or counts (first axis = old segment) re-summed per new segment; suppressed dropped."""
    values = np.asarray(values, dtype=float)
    k_new = int(mapping.max()) + 1 if (mapping >= 0).any() else 0
    out = np.zeros((k_new, *values.shape[1:]))
    for old, new in enumerate(mapping):
        if new >= 0:
            out[new] += values[old]
    return out


def wilson_interval(positives: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a rate ``positives / n`` (noised inputs are clipped to ``0 <= p <= 1``)."""
    n = np.maximum(np.asarray(n, dtype=float), 1e-12)
    p = np.clip(np.asarray(positives, dtype=float) / n, 0.0, 1.0)
    denom = 1.0 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


@dataclass(frozen=True)
class Profiles:
    table: pd.DataFrame  # one row per released segment
    mapping: np.ndarray  # old segment -> new segment (-1: suppressed)
    suppressed: list[int] = field(default_factory=list)  # old ids whose rows are "not profiled"


def profile_segments(
    sizes: np.ndarray,
    *,
    positives: np.ndarray | None = None,
    column_sums: Mapping[str, np.ndarray] | None = None,
    column_names: Mapping[str, Sequence[str]] | None = None,
    min_size: float = 0.0,
    centroids: Sequence[np.ndarray] | None = None,
    party_weights: Sequence[float] | None = None,
    policy: str = "merge",
    z: float = 1.96,
) -> Profiles:
    """Profile table: noised size, outcome rate with its Wilson interval, each party's own-column means.

    Columns: ``size``, then (with ``positives``) ``rate``, ``rate_low``, ``rate_high``, then
    ``<party>:<column>`` means (sums divided by the noised size; in the units of the sums given).
    """
    sizes = np.asarray(sizes, dtype=float)
    if sizes.ndim != 1 or sizes.size == 0:
        raise DataError(f"segment sizes must be a non-empty vector, got shape {sizes.shape}")
    k = sizes.shape[0]
    if min_size > 0 and policy == "merge" and centroids is None and (sizes < min_size).any():
        raise ConfigError(
            "merging small segments needs the segment centroids; pass centroids or policy='suppress'"
        )
    mapping = (
        enforce_min_size(sizes, min_size, centroids=centroids, party_weights=party_weights, policy=policy)
        if min_size > 0
        else np.arange(k, dtype=np.int64)
    )
    new_sizes = merge_aggregates(sizes, mapping)
    table = pd.DataFrame({"size": new_sizes})
    table.index.name = "segment"
    safe = np.maximum(new_sizes, 1.0)
    if positives is not None:
        pos = np.asarray(positives, dtype=float)
        if pos.shape != (k,):
            raise DataError(f"positives must have one value per segment ({k}), got shape {pos.shape}")
        new_pos = merge_aggregates(pos, mapping)
        table["rate"] = np.clip(new_pos / safe, 0.0, 1.0)
        table["rate_low"], table["rate_high"] = wilson_interval(new_pos, safe, z)
    for party, sums in (column_sums or {}).items():
        sums = np.asarray(sums, dtype=float)
        if sums.ndim != 2 or sums.shape[0] != k:
            raise DataError(
                f"{party}: column sums must be a (segments={k}, columns) table, got shape {sums.shape}"
            )
        names = list((column_names or {}).get(party, [f"x{j}" for j in range(sums.shape[1])]))
        if len(names) != sums.shape[1]:
            raise DataError(f"{party}: {sums.shape[1]} column sums but {len(names)} column names")
        means = merge_aggregates(sums, mapping) / safe[:, None]
        for j, name in enumerate(names):
            table[f"{party}:{name}"] = means[:, j]
    return Profiles(table, mapping, [int(j) for j in np.flatnonzero(mapping < 0)])
