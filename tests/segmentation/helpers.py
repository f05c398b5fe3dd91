"""Shared pipeline for the segmentation tests: local k-means per party, noised grid, grid k-means."""

from __future__ import annotations

import numpy as np

from vfl.segmentation.grid import GridSegmentation, cross_tab, fit_grid
from vfl.segmentation.local import LocalClustering, cluster_locally, default_local_k, standardize
from vfl.segmentation.quality import Quality, centralized_kmeans, compare, joined


def geometric_noise(shape: tuple[int, ...], epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Two-sided geometric (discrete Laplace) noise: difference of two geometric draws, p = 1 - exp(-eps)."""
    p = 1.0 - np.exp(-epsilon)
    return (rng.geometric(p, size=shape) - rng.geometric(p, size=shape)).astype(float)


def segment(
    parts: list[np.ndarray], k: int, *, epsilon: float | None = 1.0, seed: int = 0, local_k: int | None = None
) -> tuple[GridSegmentation, list[LocalClustering], np.ndarray]:
    kp = local_k or default_local_k(k, len(parts), parts[0].shape[0])
    locals_ = [cluster_locally(p, kp, seed=seed, party=f"party {i}") for i, p in enumerate(parts)]
    labels = [loc.labels for loc in locals_]
    counts = cross_tab(labels, [loc.k for loc in locals_])
    if epsilon is not None:
        counts = counts + geometric_noise(counts.shape, epsilon, np.random.default_rng(seed + 1000))
    grid = fit_grid([loc.centroids for loc in locals_], counts, k, epsilon=epsilon, seed=seed)
    return grid, locals_, grid.assign(labels)


def quality(parts: list[np.ndarray], labels: np.ndarray, k: int, seed: int = 0) -> Quality:
    data = joined([standardize(p)[0] for p in parts])
    return compare(data, labels, centralized_kmeans(data, k, seed=seed))


def predict_segments(job, models: dict, datas: dict, keypairs: dict, policies: dict):
    """``vfl predict`` with a segment model, every party's role in this process (in-process network);
    returns the results by party."""
    from vfl.parties.jobs import RoleContext, run_role
    from vfl.parties.simulation import run_parties
    from vfl.transport.local import LocalNetwork

    network = LocalNetwork(list(job.parties))
    roles = {}
    for party in job.parties:
        ctx = RoleContext(job.session(network.channel(party)), job, datas[party], model=models[party],
                          keypair=keypairs.get(party), segment_policy=policies.get(party))  # fmt: skip
        roles[party] = lambda ctx=ctx: run_role("predict", ctx)
    return run_parties(network, roles)
