"""A plain numpy trainer of the Taylor-loss logistic regression, for equivalence tests.

It sees the joined data in one place, which the federation never does; training the federation with
the same options must give the same weights (up to the engine's fixed-point encoding of ciphertexts).
"""

from __future__ import annotations

import numpy as np

from vfl.optim import (
    EarlyStopping,
    IterateAverage,
    ShardOptimizer,
    epoch_batches,
    initial_weights,
    max_rounds,
    passes,
)
from vfl.options import TrainOptions


def train_reference(
    blocks: list[np.ndarray], labels: np.ndarray, options: TrainOptions, parties: list[str]
) -> tuple[list[np.ndarray], list[float]]:
    """Weights per block (block 0 is the guest's, starting with the intercept column) and epoch losses."""
    s = 2.0 * labels - 1.0
    n = len(labels)
    weights = [initial_weights(b.shape[1], options, p) for b, p in zip(blocks, parties, strict=True)]
    optimizers = [ShardOptimizer(options, b.shape[1], 0 if i == 0 else None) for i, b in enumerate(blocks)]
    stopper = EarlyStopping(options)
    losses: list[float] = []
    for epoch in range(max_rounds(n, options)):
        loss_sum, rows = 0.0, 0
        averages = [IterateAverage() for _ in blocks]
        for batch in epoch_batches(n, options, epoch):
            m = len(batch)
            rows += m
            z = sum(b[batch] @ w for b, w in zip(blocks, weights, strict=True))
            loss_sum += m * np.log(2) - s[batch] @ z / 2 + z @ z / 8
            d4 = z - 2 * s[batch]
            for i, b in enumerate(blocks):
                weights[i] = optimizers[i].update(
                    weights[i], b[batch].T @ d4 / (4 * m), passes(n, options, epoch)
                )
                averages[i].add(weights[i])
        weights = [a.result(w, options) for a, w in zip(averages, weights, strict=True)]
        losses.append(loss_sum / rows)
        if stopper.should_stop(losses[-1]):
            break
    return weights, losses
