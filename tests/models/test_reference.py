"""The numpy reference trainers: the same optimizer plumbing as tests/lr/reference.py, and the right optima."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lr.reference import train_reference
from vfl.errors import DataError
from vfl.models.kinds import from_name
from vfl.models.reference import (
    predict,
    train_linear_reference,
    train_ovr_reference,
    train_poisson_reference,
)
from vfl.options import TrainOptions

PARTIES = ["guest", "host"]


def _blocks(rng: np.random.Generator, n: int = 300) -> list[np.ndarray]:
    g = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    return [g, rng.normal(size=(n, 3))]


def test_ovr_class_k_is_the_binary_reference_on_the_indicator() -> None:
    rng = np.random.default_rng(1)
    blocks = _blocks(rng)
    y = rng.integers(0, 3, 300)
    opts = TrainOptions(max_epochs=6, batch_size=64, optimizer="adam", init="random", seed=3, tol=0.0)
    weights, losses = train_ovr_reference(blocks, y, 3, opts, PARTIES)
    total = np.zeros(len(losses))
    for k in range(3):
        wk, lk = train_reference(blocks, (y == k).astype(float), opts, PARTIES)
        for b in range(2):
            np.testing.assert_allclose(weights[b][:, k], wk[b], rtol=1e-9, atol=1e-12)
        total += np.asarray(lk[: len(losses)])
    np.testing.assert_allclose(losses, total, rtol=1e-12)


def test_linear_reference_reaches_least_squares() -> None:
    rng = np.random.default_rng(2)
    blocks = _blocks(rng)
    x = np.hstack(blocks)
    y = x @ rng.normal(size=6) + 0.1 * rng.normal(size=300)
    opts = from_name("linear").options(penalty="none", max_epochs=400, tol=1e-13)
    weights, losses = train_linear_reference(blocks, y, opts, PARTIES)
    exact = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(np.concatenate(weights), exact, atol=1e-4)
    assert losses[-1] < losses[0]


def test_linear_gradient_step_by_hand() -> None:
    rng = np.random.default_rng(4)
    blocks = _blocks(rng, 40)
    y = rng.normal(size=40)
    opts = TrainOptions(max_epochs=1, batch_size=None, optimizer="sgd", learning_rate=0.1, penalty="none")
    weights, losses = train_linear_reference(blocks, y, opts, PARTIES)
    x = np.hstack(blocks)
    np.testing.assert_allclose(np.concatenate(weights), -0.1 * x.T @ (0 - y) / 40, rtol=1e-13)
    assert losses[0] == np.mean(y**2) / 2


def test_poisson_reference_matches_glm_optimum_and_exposure() -> None:
    rng = np.random.default_rng(5)
    blocks = _blocks(rng, 2000)
    x = np.hstack(blocks)
    beta = np.array([0.3, 0.2, -0.1, 0.0, 0.15, -0.2])
    exposure = rng.uniform(0.5, 2.0, 2000)
    y = rng.poisson(exposure * np.exp(x @ beta)).astype(float)
    opts = from_name("poisson").options(penalty="none", max_epochs=600, tol=1e-13)
    weights, _ = train_poisson_reference(blocks, y, opts, PARTIES, exposure=exposure)
    w = np.concatenate(weights)
    grad = x.T @ (exposure * np.exp(x @ w) - y) / len(y)  # the optimum: the score equations hold
    assert np.max(np.abs(grad)) < 1e-4
    np.testing.assert_allclose(w, beta, atol=0.08)
    mu = predict("poisson", blocks, weights, exposure)
    np.testing.assert_allclose(mu, exposure * np.exp(x @ w))


def test_poisson_gradient_step_by_hand() -> None:
    rng = np.random.default_rng(6)
    blocks = _blocks(rng, 30)
    y = rng.poisson(1.0, 30).astype(float)
    opts = TrainOptions(max_epochs=1, batch_size=None, optimizer="sgd", learning_rate=0.1, penalty="none")
    weights, losses = train_poisson_reference(blocks, y, opts, PARTIES)
    x = np.hstack(blocks)
    b0 = np.log(y.mean())  # the intercept starts at the model without features; all else at 0
    start = np.zeros(x.shape[1])
    start[0] = b0
    mu = np.exp(b0)
    np.testing.assert_allclose(np.concatenate(weights), start - 0.1 * x.T @ (mu - y) / 30, rtol=1e-13)
    assert losses[0] == pytest.approx(mu - y.mean() * b0, rel=1e-13)  # mean(exp(b0) - y b0)


def test_ovr_reaches_the_taylor_optimum() -> None:
    """With full batches the OvR Taylor loss is least squares on targets 2 s: the closed form is known."""
    rng = np.random.default_rng(7)
    blocks = _blocks(rng, 400)
    x = np.hstack(blocks)
    y = np.argmax(x[:, 1:4] + 0.5 * rng.normal(size=(400, 3)), axis=1)
    opts = from_name("multiclass-lr").options(penalty="none", max_epochs=600, tol=1e-13)
    weights, _ = train_ovr_reference(blocks, y, 3, opts, PARTIES)
    s = 2.0 * np.eye(3)[y] - 1.0
    exact = np.linalg.lstsq(x, 2.0 * s, rcond=None)[0]
    np.testing.assert_allclose(np.vstack(weights), exact, atol=1e-4)


def test_poisson_starts_from_the_model_without_features() -> None:
    """The guest's intercept starts at log(sum y / sum exposure): with zero learning rate it stays there."""
    from vfl.models.poisson import null_intercept
    from vfl.models.reference import train_poisson_reference

    rng = np.random.default_rng(3)
    x = [np.column_stack([np.ones(50), rng.normal(size=50)]), rng.normal(size=(50, 2))]
    y = rng.poisson(0.4, 50).astype(float)
    exposure = rng.uniform(0.5, 2.0, 50)
    opts = TrainOptions(model="poisson", optimizer="sgd", learning_rate=1e-12, batch_size=0, max_epochs=1,
                        init="zeros", tol=0.0)  # fmt: skip
    weights, _ = train_poisson_reference(x, y, opts, PARTIES, exposure=exposure)
    assert weights[0][0] == pytest.approx(np.log(y.sum() / exposure.sum()), abs=1e-9)
    assert null_intercept(y, np.log(exposure)) == pytest.approx(np.log(y.sum() / exposure.sum()))
    with pytest.raises(DataError, match="all zero"):
        null_intercept(np.zeros(5))
