"""The local parts of fast convergence: whitening, rounds of a pass, iterate averaging (DESIGN.md §6)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage

from tests.lr.reference import train_reference
from vfl.data import Whitening, inverse_sqrt
from vfl.optim import (
    MIN_ROUND_ROWS,
    IterateAverage,
    epoch_batches,
    learning_rate,
    max_rounds,
    passes,
    rounds_per_pass,
)
from vfl.options import FAST_CONVERGENCE, LARGE_DATA, LARGE_DATA_ROWS, TrainOptions


def _correlated(rng, n=2000, k=5):
    base = rng.normal(size=(n, k))
    return base @ (np.eye(k) + 0.8 * rng.normal(size=(k, k)))


def test_whitening_makes_second_moments_identity_and_maps_weights_back():
    rng = np.random.default_rng(1)
    x = _correlated(rng)
    white = Whitening.fit(x)
    moment = white.apply(x).T @ white.apply(x) / len(x)
    lw = ledoit_wolf_shrinkage(x, assume_centered=True)
    assert white.shrinkage == pytest.approx(max(lw, Whitening.SHRINK_PER_COLUMN * 5 / len(x)))
    # The shrunk moment is whitened exactly; the data's own moment becomes well conditioned.
    c = x.T @ x / len(x)
    shrunk = (1 - white.shrinkage) * c + white.shrinkage * np.trace(c) / 5 * np.eye(5)
    np.testing.assert_allclose(white.matrix @ shrunk @ white.matrix, np.eye(5), atol=1e-9)
    assert np.linalg.cond(moment) < 5.0 < np.linalg.cond(c) / 100
    w = rng.normal(size=5)
    np.testing.assert_allclose(white.apply(x) @ w, x @ white.to_original(w), rtol=1e-10)


def test_whitening_matches_a_numpy_reference_and_leaves_the_intercept():
    rng = np.random.default_rng(2)
    x = np.hstack([np.ones((300, 1)), _correlated(rng, 300, 4)])
    white = Whitening.fit(x, skip=1)
    rest = x[:, 1:]
    c = rest.T @ rest / len(rest)
    rho = max(ledoit_wolf_shrinkage(rest, assume_centered=True), Whitening.SHRINK_PER_COLUMN * 4 / 300)
    c = (1 - rho) * c + rho * np.trace(c) / 4 * np.eye(4)
    lam, v = np.linalg.eigh(c)
    expected = v @ np.diag(lam**-0.5) @ v.T
    np.testing.assert_allclose(white.matrix[1:, 1:], expected, rtol=1e-10)
    assert white.matrix[0, 0] == 1.0 and not white.matrix[0, 1:].any() and not white.matrix[1:, 0].any()


def test_inverse_sqrt_floors_a_rank_deficient_moment():
    x = np.random.default_rng(3).normal(size=(100, 2))
    x = np.hstack([x, x[:, :1]])  # a duplicated column
    m = inverse_sqrt(x.T @ x / len(x), 1e-3)
    assert np.isfinite(m).all()


def test_a_pass_is_loss_checks_rounds_covering_every_row_once():
    o = TrainOptions(batch_size=512, seed=3, loss_checks=3)
    n = 3 * MIN_ROUND_ROWS
    assert rounds_per_pass(n, o) == 3 and max_rounds(n, o) == 3 * o.max_epochs
    rounds = [epoch_batches(n, o, r) for r in range(3)]
    rows = np.concatenate([b for r in rounds for b in r])
    assert sorted(rows.tolist()) == list(range(n))
    assert all(np.all(np.diff(b) > 0) for r in rounds for b in r)  # each batch in row order
    assert not np.array_equal(epoch_batches(n, o, 3)[0], rounds[0][0])  # reshuffled every pass
    # Small data: one round per pass (the loss of a small share of the rows is too noisy to compare).
    assert rounds_per_pass(MIN_ROUND_ROWS - 1, o) == 1
    assert epoch_batches(100, o, 1)[0].tolist() == list(range(100))
    # The schedule runs on passes: round 2 of 3 per pass is 2/3 of the way through pass 0.
    assert passes(n, o, 2) == pytest.approx(2 / 3)
    assert learning_rate(o, passes(n, o, 3)) == pytest.approx(o.learning_rate / 1.5)


def test_iterate_average_is_the_mean_of_the_round():
    avg = IterateAverage()
    for w in ([1.0, 2.0], [3.0, 4.0], [5.0, 0.0]):
        avg.add(np.array(w))
    np.testing.assert_allclose(avg.result(np.zeros(2), TrainOptions(**FAST_CONVERGENCE)), [3.0, 2.0])
    assert avg.result(np.ones(2), TrainOptions(averaging="none")).tolist() == [1.0, 1.0]


def test_the_fast_profile_converges_in_fewer_passes_than_the_defaults():
    """On correlated columns the whitened, averaged SGD stops in fewer rounds of rows than Adam did."""
    rng = np.random.default_rng(4)
    xg, xh = _correlated(rng, 4000, 4), _correlated(rng, 4000, 4)
    z = xg @ rng.normal(size=4) * 0.3 + xh @ rng.normal(size=4) * 0.3
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(float)
    xg = (xg - xg.mean(0)) / xg.std(0)
    xh = (xh - xh.mean(0)) / xh.std(0)
    xg = np.hstack([np.ones((4000, 1)), xg])
    old = TrainOptions(optimizer="adam", learning_rate=0.2, tol=1e-3, patience=2, loss_checks=1,
                       precondition="none", averaging="none")  # fmt: skip
    _, old_losses = train_reference([xg, xh], y, old, ["g", "h"])
    new = TrainOptions(**FAST_CONVERGENCE)
    wg, wh = Whitening.fit(xg, skip=1), Whitening.fit(xh)
    _, new_losses = train_reference([wg.apply(xg), wh.apply(xh)], y, new, ["g", "h"])
    old_passes, new_passes = len(old_losses), len(new_losses) / rounds_per_pass(4000, new)
    assert new_passes < old_passes
    assert new_losses[-1] <= old_losses[-1] + 1e-3


def test_auto_precondition_picks_the_large_data_profile_by_training_rows():
    o = TrainOptions()
    assert o.precondition == "auto"
    small = o.at_rows(LARGE_DATA_ROWS - 1)
    assert small == dataclasses.replace(o, precondition="none")  # the Adam defaults, unwhitened
    large = o.at_rows(LARGE_DATA_ROWS)
    assert {k: getattr(large, k) for k in LARGE_DATA} == LARGE_DATA
    assert {k for k in o.to_dict() if getattr(o, k) != getattr(large, k)} <= set(LARGE_DATA)
    assert large.at_rows(LARGE_DATA_ROWS) == large  # decided once: "whiten" stays what it is
    # Options chosen explicitly (away from their defaults) are kept; only the rest follow the profile.
    mine = TrainOptions(optimizer="momentum", tol=1e-3).at_rows(50_000)
    assert (mine.optimizer, mine.tol, mine.precondition, mine.learning_rate) == (
        "momentum",
        1e-3,
        "whiten",
        2.0,
    )
    # Other model kinds are never whitened by "auto"; "none" and "whiten" are never changed.
    assert TrainOptions(model="linear").at_rows(50_000) == TrainOptions(model="linear", precondition="none")
    for fixed in ("none", "whiten"):
        assert TrainOptions(precondition=fixed).at_rows(50_000) == TrainOptions(precondition=fixed)


def test_the_reference_trainer_applies_the_auto_rule():
    """``precondition = "auto"`` in the reference trainer equals the profile it resolves to."""
    rng = np.random.default_rng(6)
    n = LARGE_DATA_ROWS
    xg = np.hstack([np.ones((n, 1)), _correlated(rng, n, 3)])
    xh = _correlated(rng, n, 3)
    y = (rng.random(n) < 0.4).astype(float)
    auto = TrainOptions(max_epochs=1, tol=0.0)
    got, _ = train_reference([xg, xh], y, auto, ["g", "h"])
    want, _ = train_reference([xg, xh], y, auto.at_rows(n), ["g", "h"])
    adam, _ = train_reference([xg, xh], y, dataclasses.replace(auto, precondition="none"), ["g", "h"])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(got[1], adam[1])


def test_the_report_names_the_options_the_job_trained_with():
    """The guest's report and report.json show the profile ``"auto"`` resolved to, not ``"auto"``."""
    from vfl.parties.common import Job
    from vfl.parties.guest import trained_options

    job = Job("t", "guest", ("host",), "arbiter")
    big = pd.DataFrame({"held_out": [False] * LARGE_DATA_ROWS + [True] * 10})
    small = big.iloc[-20:]
    assert trained_options(job, big).optimizer == "sgd"
    assert trained_options(job, big).precondition == "whiten"
    assert trained_options(job, small) == dataclasses.replace(job.options, precondition="none")
