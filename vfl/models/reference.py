"""Plain numpy trainers of the federated algorithms on the joined data: what the protocols must equal.

They see all parties' columns in one place, which the federation never does. Each runs the same
loop: one :class:`~vfl.optim.ShardOptimizer` per party block (block 0 is
the guest's and starts with the intercept column, which is not penalized), the seeded mini-batches of
:func:`~vfl.optim.epoch_batches`, the epoch loss as the row-weighted mean of the batch losses at the
weights *before* each step, and :class:`~vfl.optim.EarlyStopping` on that loss. A federated run with
the same options must reproduce the weights to 1e-6 (up to the fixed-point encoding of ciphertexts).

* :func:`train_ovr_reference` -- one-vs-rest multi-class LR on the Taylor loss: K weight vectors per
  block, all updated on every batch; the gradient of class ``k`` is ``X^T (z_k/4 - s_k/2) / m``.
* :func:`train_binary_reference` -- binary Taylor-loss LR (DESIGN.md §6), gradient ``X^T (z/4 - s/2) / m``.
* :func:`train_linear_reference` -- linear regression, gradient ``X^T (z - y) / m`` (exact quadratic loss).
* :func:`train_poisson_reference` -- Poisson regression, gradient ``X^T (exp(z + offset) - y) / m``, the
  guest's intercept starting at ``log(sum y / sum exposure)`` (:func:`~vfl.models.poisson.null_intercept`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vfl.models.kinds import KINDS, one_hot
from vfl.models.poisson import null_intercept
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

Weights = list[np.ndarray]


def _train(
    blocks: Sequence[np.ndarray],
    n: int,
    options: TrainOptions,
    weights: Weights,
    update: Callable[[int, np.ndarray, np.ndarray, float], np.ndarray],
    residual_and_loss: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]],
) -> tuple[Weights, list[float]]:
    """The shared epoch loop: ``update(block, w, grad, passes)`` steps one block's weights."""
    options = options.at_rows(n)
    stopper = EarlyStopping(options)
    losses: list[float] = []
    for epoch in range(max_rounds(n, options)):
        loss_sum, rows = 0.0, 0
        averages = [IterateAverage() for _ in blocks]
        for batch in epoch_batches(n, options, epoch):
            m = len(batch)
            rows += m
            z = sum(b[batch] @ w for b, w in zip(blocks, weights, strict=True))
            d, batch_loss = residual_and_loss(z, batch)
            loss_sum += batch_loss
            for i, b in enumerate(blocks):
                # for K classes, grad is (columns, K): what one packed X^T [[D]] returns
                weights[i] = update(i, weights[i], b[batch].T @ d / m, passes(n, options, epoch))
                averages[i].add(weights[i])
        weights = [a.result(w, options) for a, w in zip(averages, weights, strict=True)]
        losses.append(loss_sum / rows)
        if stopper.should_stop(losses[-1]):
            break
    return weights, losses


def _train_single(
    blocks: Sequence[np.ndarray],
    n: int,
    options: TrainOptions,
    parties: Sequence[str],
    residual_and_loss: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]],
    intercept_start: float = 0.0,
) -> tuple[Weights, list[float]]:
    options = options.at_rows(n)  # precondition = "auto" picks the step rule by the training rows
    weights = [initial_weights(b.shape[1], options, p) for b, p in zip(blocks, parties, strict=True)]
    weights[0][0] += intercept_start  # block 0 starts with the guest's intercept column
    optimizers = [ShardOptimizer(options, b.shape[1], 0 if i == 0 else None) for i, b in enumerate(blocks)]

    def update(i: int, w: np.ndarray, grad: np.ndarray, at: float) -> np.ndarray:
        return optimizers[i].update(w, grad, at)

    return _train(blocks, n, options, weights, update, residual_and_loss)


def train_binary_reference(
    blocks: Sequence[np.ndarray], labels: np.ndarray, options: TrainOptions, parties: Sequence[str]
) -> tuple[Weights, list[float]]:
    """Weights per block and epoch losses (the Taylor loss ``log 2 - s z / 2 + z^2 / 8``) of binary LR."""
    s = 2.0 * np.asarray(labels, dtype=np.float64) - 1.0

    def step(z: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, float]:
        sb = s[batch]
        return (z - 2.0 * sb) / 4.0, float(len(batch) * np.log(2.0) - sb @ z / 2.0 + z @ z / 8.0)

    return _train_single(blocks, len(s), options, parties, step)


def train_linear_reference(
    blocks: Sequence[np.ndarray], y: np.ndarray, options: TrainOptions, parties: Sequence[str]
) -> tuple[Weights, list[float]]:
    """Weights per block and epoch losses (mean ``(z - y)^2 / 2``) of linear regression."""
    y = np.asarray(y, dtype=np.float64)

    def step(z: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, float]:
        d = z - y[batch]
        return d, float(d @ d) / 2.0

    return _train_single(blocks, len(y), options, parties, step)


def train_poisson_reference(
    blocks: Sequence[np.ndarray],
    y: np.ndarray,
    options: TrainOptions,
    parties: Sequence[str],
    exposure: np.ndarray | None = None,
) -> tuple[Weights, list[float]]:
    """Weights per block and epoch losses (mean ``exp(eta) - y eta``, ``eta = z + log exposure``)."""
    y = np.asarray(y, dtype=np.float64)
    offset = np.zeros(len(y)) if exposure is None else np.log(np.asarray(exposure, dtype=np.float64))

    def step(z: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, float]:
        eta = z + offset[batch]
        mu = np.exp(eta)
        return mu - y[batch], float(np.sum(mu - y[batch] * eta))

    return _train_single(blocks, len(y), options, parties, step, null_intercept(y, offset))


def train_ovr_reference(
    blocks: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    options: TrainOptions,
    parties: Sequence[str],
) -> tuple[Weights, list[float]]:
    """One-vs-rest Taylor-loss LR: per block a ``(columns, K)`` weight matrix; epoch losses summed over classes.

    ``y`` holds class indices ``0 .. K-1`` (``MulticlassLR.check_labels`` encodes them). Every class
    has its own optimizer state per block, so class ``k`` follows exactly the binary reference on the
    indicator ``y == k``, all classes sharing the batches.
    """
    y = np.asarray(y).astype(np.int64)
    n, k = len(y), int(n_classes)
    s = 2.0 * one_hot(y, k) - 1.0
    weights = [
        np.stack([initial_weights(b.shape[1], options, p) for _ in range(k)], axis=1)
        for b, p in zip(blocks, parties, strict=True)
    ]
    optimizers = [
        [ShardOptimizer(options, b.shape[1], 0 if i == 0 else None) for _ in range(k)]
        for i, b in enumerate(blocks)
    ]

    def step(z: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, float]:
        sb = s[batch]  # z is (m, K)
        m = len(batch)
        loss = float(np.sum(m * np.log(2.0) - np.sum(sb * z, axis=0) / 2 + np.sum(z * z, axis=0) / 8))
        return z / 4.0 - sb / 2.0, loss

    def update(i: int, w: np.ndarray, grad: np.ndarray, at: float) -> np.ndarray:
        return np.stack([optimizers[i][c].update(w[:, c], grad[:, c], at) for c in range(k)], axis=1)

    return _train(blocks, n, options, weights, update, step)


def predict(kind: str, blocks: Sequence[np.ndarray], weights: Weights, exposure: np.ndarray | None = None):
    """Scores of a kind's link on the joint predictor ``sum_b X_b w_b``."""
    z = sum(b @ w for b, w in zip(blocks, weights, strict=True))
    return KINDS[kind].link(z, exposure)
