"""Calibration, evaluation metrics with intervals, curves and warnings, and the guest-only baseline."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from vfl.baseline import fit_baseline
from vfl.calibration import Calibrator, fit_calibrator, logit, sigmoid
from vfl.errors import DataError
from vfl.metrics import (
    MIN_HELD_OUT_ROWS,
    delong_auc,
    evaluate,
    evaluate_held_out,
    gains_curve,
    wilson_interval,
)


def taylor_like(n: int, seed: int = 0, scale: float = 4.0):
    """Labels drawn from a true logistic model, and scores that are ``scale`` times the true logit."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    true_logit = 1.2 * x[:, 0] - 0.8 * x[:, 1] - 0.7
    labels = (rng.random(n) < sigmoid(true_logit)).astype(float)
    return labels, scale * true_logit, true_logit


def test_calibration_repairs_overconfident_taylor_scores():
    labels, z, truth = taylor_like(6000)
    train, held = slice(0, 3000), slice(3000, None)
    raw = skm.log_loss(labels[held], sigmoid(z[held]))
    best = skm.log_loss(labels[held], sigmoid(truth[held]))
    for method in ("platt", "isotonic"):
        cal = fit_calibrator(z[train], labels[train], method)
        calibrated = skm.log_loss(labels[held], np.clip(cal.apply(z[held]), 1e-12, 1 - 1e-12))
        assert calibrated < raw - 0.1, method
        assert calibrated < best + 0.02, method
    platt = fit_calibrator(z[train], labels[train])
    assert platt.method == "platt"  # the default
    assert platt.slope == pytest.approx(0.25, abs=0.03)  # undoes the factor 4


def test_platt_matches_scikit_learn_logistic_regression_on_z():
    labels, z, _ = taylor_like(4000, seed=3)
    cal = fit_calibrator(z, labels, "platt")
    sk = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], labels)
    assert cal.slope == pytest.approx(sk.coef_[0, 0], rel=0.01)
    assert cal.intercept == pytest.approx(sk.intercept_[0], abs=0.01)


@pytest.mark.parametrize("method", ["platt", "isotonic", "none"])
def test_calibrator_round_trips_exactly_through_json(method):
    labels, z, _ = taylor_like(1500, seed=1)
    cal = fit_calibrator(z[:1000], labels[:1000], method)
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    assert np.array_equal(again.apply(z), cal.apply(z))
    probabilities = cal.apply(z)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_calibrator_rejects_bad_inputs():
    with pytest.raises(DataError, match="method"):
        fit_calibrator(np.zeros(4), np.array([0, 1, 0, 1]), "beta")
    with pytest.raises(DataError, match="both classes"):
        fit_calibrator(np.arange(4.0), np.ones(4))
    with pytest.raises(DataError, match="format"):
        Calibrator.from_dict({"format": "other", "method": "platt"})
    assert np.allclose(logit(sigmoid(np.array([-5.0, 0.0, 5.0]))), [-5.0, 0.0, 5.0])


def test_evaluate_keeps_its_outputs_and_adds_the_new_ones():
    labels, z, _ = taylor_like(570, seed=2)
    train, held = np.arange(456), np.arange(456, 570)
    cal, ev = evaluate_held_out(labels, z, train, held, positive_label="malignant")
    for key in (
        "held_out_rows",
        "positive_rate",
        "auc",
        "ks",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "log_loss",
    ):
        assert key in ev.metrics
    assert list(ev.roc.columns) == ["fpr", "tpr"] and "cumulative_gain" in ev.lift.columns
    assert ev.metrics["held_out_rows"] == 114 and isinstance(ev.metrics["held_out_rows"], int)
    assert isinstance(ev.metrics["held_out_positives"], int)
    assert ev.metrics["log_loss_calibrated"] < ev.metrics["log_loss"]
    assert ev.metrics["brier_calibrated"] < ev.metrics["brier"]
    assert ev.thresholds["default"]["value"] == 0.5
    assert ev.thresholds["default"]["on"] == "calibrated probability"
    assert 0 < ev.thresholds["f1_optimal"]["value"] < 1
    assert ev.positive_label == "malignant" and ev.calibration_method == "platt"
    # accuracy at 0.5 is on the calibrated probabilities
    assert ev.metrics["accuracy"] == pytest.approx(np.mean((cal.apply(z[held]) >= 0.5) == labels[held]))
    assert ev.intervals["auc"]["low"] < ev.metrics["auc"] < ev.intervals["auc"]["high"]
    assert ev.intervals["accuracy"]["method"] == "Wilson"
    text = json.dumps(ev.to_dict(), allow_nan=False)  # strict JSON
    assert '"held_out_rows": 114,' in text and "114.0" not in text
    assert sum(r for r in ev.calibration_curve["raw"]["rows"]) == 114
    dist = ev.score_distribution
    assert sum(dist["positive"]) == ev.metrics["held_out_positives"]
    assert sum(dist["negative"]) == 114 - ev.metrics["held_out_positives"]
    assert ev.warnings  # 114 rows is below the small-sample threshold


def test_evaluate_without_calibrator_behaves_as_before():
    labels = np.array([0, 0, 1, 1])
    ev = evaluate(labels, np.array([0.1, 0.4, 0.35, 0.8]))
    assert ev.metrics["auc"] == pytest.approx(0.75) and ev.metrics["accuracy"] == pytest.approx(0.75)
    assert ev.thresholds["default"]["on"] == "score" and "log_loss_calibrated" not in ev.metrics


@pytest.mark.parametrize("n", [7, 150, 5000])
def test_gains_curve_runs_from_origin_to_one(n):
    rng = np.random.default_rng(n)
    labels = (rng.random(n) < 0.3).astype(float)
    labels[0] = 1
    curve = gains_curve(labels, rng.random(n))
    first, last = curve.iloc[0], curve.iloc[-1]
    assert (first["fraction_targeted"], first["fraction_captured"]) == (0.0, 0.0)
    assert (last["fraction_targeted"], last["fraction_captured"]) == (1.0, 1.0)
    assert np.all(np.diff(curve["fraction_captured"]) >= 0) and len(curve) <= 201


def test_delong_matches_auc_with_ties():
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.3, 0.3, 0.7, 0.2])
    auc, se, low, high = delong_auc(labels, scores)
    assert auc == pytest.approx(skm.roc_auc_score(labels, scores))
    assert se > 0 and low < auc < high


def test_intervals_cover_the_truth_at_about_their_level():
    rng = np.random.default_rng(2024)
    true_auc = 0.7602499389065233  # Phi(1 / sqrt(2)): positives ~ N(1, 1), negatives ~ N(0, 1)
    auc_hits = acc_hits = 0
    runs = 400
    for _ in range(runs):
        scores = np.concatenate([rng.normal(1, 1, 60), rng.normal(0, 1, 140)])
        labels = np.concatenate([np.ones(60), np.zeros(140)])
        _, _, low, high = delong_auc(labels, scores)
        auc_hits += low <= true_auc <= high
        correct = int(rng.binomial(80, 0.85))
        lo, hi = wilson_interval(correct, 80)
        acc_hits += lo <= 0.85 <= hi
    assert 0.90 <= auc_hits / runs <= 0.99
    assert 0.90 <= acc_hits / runs <= 0.99


def test_small_sample_warning_thresholds():
    labels, z, _ = taylor_like(5000, seed=5)
    assert evaluate(labels, sigmoid(z)).warnings == []
    small = evaluate(labels[:50], sigmoid(z[:50])).warnings
    assert small and f"fewer than {MIN_HELD_OUT_ROWS}" in small[0]
    rare = np.zeros(1000)
    rare[:10] = 1
    notes = evaluate(rare, np.linspace(1, 0, 1000)).warnings
    assert len(notes) == 1 and "10 positive rows" in notes[0]


def test_guest_only_baseline_and_what_the_partner_adds():
    rng = np.random.default_rng(7)
    n = 3000
    guest, host = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    truth = guest @ [0.8, -0.5, 0.0] + host @ [1.5, 1.0, -1.0]
    labels = (rng.random(n) < sigmoid(truth)).astype(float)
    train, held = np.arange(2400), np.arange(2400, n)
    matrix = np.hstack([np.ones((n, 1)), guest])  # with the intercept column, as the guest's model matrix
    base = fit_baseline(matrix, labels, train, held, columns=["(intercept)", "a", "b", "c"])
    assert base.columns == ["a", "b", "c"] and base.held_out_rows == 600 and base.training_rows == 2400
    assert 0.6 < base.auc < 0.8 and base.auc_low < base.auc < base.auc_high
    joint = evaluate(labels[held], sigmoid(truth[held]))
    assert joint.metrics["auc"] > base.auc + 0.1
    assert joint.metrics["top_decile_lift"] > base.top_decile_lift
    assert "scores" not in base.to_dict() and len(base.to_dict(with_scores=True)["scores"]) == 600
    json.dumps(base.to_dict(), allow_nan=False)


def test_auc_interval_does_not_collapse_on_perfect_separation():
    labels = np.array([0] * 40 + [1] * 70)
    scores = np.concatenate([np.linspace(0, 0.4, 40), np.linspace(0.6, 1, 70)])
    ev = evaluate(labels, scores)
    iv = ev.intervals["auc"]
    assert ev.metrics["auc"] == 1.0 and iv["se"] == 0.0
    assert 0.85 < iv["low"] < 0.95 and iv["high"] == 1.0 and "degenerate" in iv["method"]


@pytest.mark.parametrize(
    ("values", "positive", "expected"),
    [
        ([0, 1, 1, 0], None, "1"),
        ([True, False], None, "True"),
        (["no", "yes", "no"], "yes", "yes"),
        (["B", "M"], "M", "M"),
    ],
)
def test_positive_class_is_the_label_binary_labels_turns_into_one(values, positive, expected):
    import pandas as pd

    from vfl.data import binary_labels, positive_class

    series = pd.Series(values)
    assert positive_class(series, column="y", positive=positive) == expected
    ones = series[binary_labels(series, column="y", positive=positive) == 1]
    assert {str(v) for v in ones} == {expected}
