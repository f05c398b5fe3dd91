import numpy as np
import pytest
from sklearn.cluster import KMeans

from vfl.segmentation.quality import adjusted_rand, centralized_kmeans, compare, kmeans_objective


def test_objective_matches_sklearn_inertia() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    km = KMeans(4, n_init=3, random_state=0).fit(x)
    assert kmeans_objective(x, km.labels_) == pytest.approx(km.inertia_, rel=1e-6)
    # labels need not be 0..K-1
    assert kmeans_objective(x, km.labels_ * 10 + 3) == pytest.approx(km.inertia_, rel=1e-6)


def test_reference_compares_to_itself() -> None:
    x = np.random.default_rng(1).normal(size=(400, 3))
    ref = centralized_kmeans(x, 3, seed=0)
    q = compare(x, ref.labels, ref)
    assert q.ratio == pytest.approx(1.0)
    assert q.ari == pytest.approx(1.0)
    assert adjusted_rand(np.zeros(400, dtype=int), ref.labels) == pytest.approx(0.0)
