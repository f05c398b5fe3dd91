"""Joint segmentation math (job kind ``segment``): grid k-means over vertically split columns.

Pure library code, no network: ``local`` (each party: standardize, local k-means), ``grid`` (weighted
k-means over the noised cross-tab of local cluster ids, in the split form the protocol runs, and the
cell -> segment lookup), ``profiles`` (segment profiles from per-segment aggregates, minimum size),
``quality`` (objective ratio and ARI against centralized k-means), ``synthetic`` (test data, DP noise
for measurements).
"""

from vfl.segmentation.grid import GridSegmentation, cross_tab, fit_grid, lookup_table, weighted_lloyd
from vfl.segmentation.local import (
    LocalClustering,
    Standardizer,
    cluster_locally,
    default_local_k,
    standardize,
)
from vfl.segmentation.profiles import (
    Profiles,
    enforce_min_size,
    merge_aggregates,
    profile_segments,
    segment_sums,
    wilson_interval,
)
from vfl.segmentation.quality import Quality, centralized_kmeans, compare, joined, kmeans_objective

__all__ = [
    "GridSegmentation",
    "LocalClustering",
    "Profiles",
    "Quality",
    "Standardizer",
    "centralized_kmeans",
    "cluster_locally",
    "compare",
    "cross_tab",
    "default_local_k",
    "enforce_min_size",
    "fit_grid",
    "joined",
    "kmeans_objective",
    "lookup_table",
    "merge_aggregates",
    "profile_segments",
    "segment_sums",
    "standardize",
    "weighted_lloyd",
    "wilson_interval",
]
