"""Synthetic vertically split data and a DP noise sampler for tests and benchmarks (not for production).

:func:`two_sided_geometric` uses numpy's generator: fine to measure quality under the noise a
discrete-Laplace mechanism adds, **not** a secure sampler (predictable seed, no constant-time
sampling). The cross-tab protocol owns the real noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import make_blobs


def two_sided_geometric(shape: int | tuple[int, ...], epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Discrete Laplace noise for a count of sensitivity 1: difference of two geometric draws,
    ``p = 1 - exp(-epsilon)``; ``epsilon``-DP for the whole cross-tab (one row changes one cell by 1;
    add/remove-one neighbouring)."""
    p = 1.0 - np.exp(-epsilon)
    return (rng.geometric(p, size=shape) - rng.geometric(p, size=shape)).astype(float)


@dataclass(frozen=True)
class VerticalData:
    parts: list[np.ndarray]  # one (n, d_p) matrix per party
    truth: np.ndarray  # (n,) generating cluster / persona
    outcome: np.ndarray | None = None  # (n,) 0/1, the guest's label when there is one


def vertical_blobs(
    n: int, columns: Sequence[int], centers: int, *, cluster_std: float = 1.0, seed: int = 0
) -> VerticalData:
    """``make_blobs`` with ``sum(columns)`` features split into consecutive blocks, one per party."""
    x, y = make_blobs(
        n_samples=n, n_features=int(sum(columns)), centers=centers, cluster_std=cluster_std, random_state=seed
    )
    edges = np.cumsum([0, *columns])
    return VerticalData([x[:, a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)], y.astype(np.int64))


def marketing_like(n: int, *, seed: int = 0, personas: int = 6, columns: int = 8) -> VerticalData:
    """A retailer (guest, with a conversion outcome) and a bank (host), ``columns`` columns each.

    Customers belong to unequal personas that shift both parties' columns, plus a continuous
    "affluence" factor shared across parties and independent noise; several columns are skewed
    (log-normal spend and balances, counts), one is binary, so clusters overlap as in real audiences.
    """
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.full(personas, 3.0))
    persona = rng.choice(personas, size=n, p=share)
    affluence = rng.normal(size=n)
    shift_g = rng.normal(scale=1.2, size=(personas, columns))
    shift_h = rng.normal(scale=1.2, size=(personas, columns))
    load_g = rng.normal(scale=0.6, size=columns)
    load_h = rng.normal(scale=0.6, size=columns)

    def block(shift: np.ndarray, load: np.ndarray) -> np.ndarray:
        z = shift[persona] + affluence[:, None] * load + rng.normal(scale=0.8, size=(n, columns))
        out = z.copy()
        out[:, 0] = np.exp(0.5 * z[:, 0])  # spend / balance: log-normal
        out[:, 1] = rng.poisson(np.exp(0.4 * z[:, 1]))  # visits / products: counts
        out[:, 2] = (z[:, 2] > 0.3).astype(float)  # binary flag
        return out

    guest, host = block(shift_g, load_g), block(shift_h, load_h)
    logit = -1.5 + 0.8 * affluence + rng.normal(scale=1.0, size=personas)[persona]
    outcome = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return VerticalData([guest, host], persona.astype(np.int64), outcome)
