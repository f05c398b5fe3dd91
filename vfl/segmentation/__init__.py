"""Joint segmentation math (job kind ``segment``): grid k-means over vertically split columns.

Pure library code, no network: ``local`` (each party: standardize, local k-means), ``grid`` (weighted
k-means over the noised cross-tab of local cluster ids, cell -> segment lookup), ``refine`` (optional
cell-mean refinement), ``profiles`` (segment profiles from per-segment aggregates, minimum size),
``quality`` (objective ratio and ARI against centralized k-means), ``synthetic`` (test data, DP noise).
"""

from vfl.segmentation.grid import GridSegmentation, cross_tab, fit_grid
from vfl.segmentation.local import (
    LocalClustering,
    Standardizer,
    cluster_locally,
    default_local_k,
    standardize,
)

__all__ = [
    "GridSegmentation",
    "LocalClustering",
    "Standardizer",
    "cluster_locally",
    "cross_tab",
    "default_local_k",
    "fit_grid",
    "standardize",
]
