"""Evaluation of scores against labels at the guest: the metrics a marketer and a risk team ask for.

``evaluate`` returns an :class:`Evaluation`. Its ``metrics`` dict holds numbers only (integers stay ``int``):

- ``held_out_rows``, ``held_out_positives`` (ints), ``positive_rate``;
- ranking: ``auc``, ``ks``, ``top_decile_lift`` (of the scores as given; calibration does not change the order);
- decisions: ``threshold`` and ``accuracy``, ``precision``, ``recall``, ``f1`` at it. The threshold is applied to
  the *calibrated* probabilities when a calibrator is given (default 0.5), else to the scores as given;
- probabilities: ``log_loss`` and ``brier`` of the scores as given (raw), ``log_loss_calibrated`` and
  ``brier_calibrated`` when a calibrator is given.

Besides the dict: ``intervals`` (AUC by DeLong, accuracy, precision and recall by Wilson, at 95%),
``thresholds`` (the default threshold and, given training rows, the F1-optimal one chosen on them, each with
its decision metrics on the held-out rows), the ROC, lift table, cumulative gains and reliability curves, the
score distribution by class, the positive class label, and small-sample ``warnings``.

Small-sample rule: a warning when the held-out rows are fewer than ``MIN_HELD_OUT_ROWS`` (200) or the rarer
class among them has fewer than ``MIN_MINORITY_ROWS`` (30) rows. Below those sizes the 95% interval of an AUC
near 0.8 is typically wider than +/-0.07, and a single row moves accuracy by half a point or more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

if TYPE_CHECKING:
    from vfl.calibration import Calibrator

MIN_HELD_OUT_ROWS = 200
MIN_MINORITY_ROWS = 30
CONFIDENCE = 0.95
GAINS_POINTS = 200  # the gains curve keeps at most this many steps (plus the origin)
CALIBRATION_BINS = 10
DISTRIBUTION_BINS = 20
_CLIP = 1e-12


@dataclass(frozen=True)
class Evaluation:
    """Held-out metrics, the ROC curve, the lift/gains table by decile, and everything the report shows."""

    metrics: dict[str, float]
    roc: pd.DataFrame  # columns fpr, tpr
    lift: pd.DataFrame  # one row per decile
    gains: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"fraction_targeted": [], "fraction_captured": []})
    )
    calibration_curve: dict[str, pd.DataFrame] = field(default_factory=dict)  # "raw" / "calibrated"
    score_distribution: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)  # "default" and maybe "f1_optimal"
    positive_label: str = "1"
    calibration_method: str = "none"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (numpy scalars become Python numbers; integer quantities stay ints)."""
        return jsonable(
            {
                "metrics": self.metrics,
                "intervals": self.intervals,
                "thresholds": self.thresholds,
                "positive_label": self.positive_label,
                "calibration_method": self.calibration_method,
                "warnings": self.warnings,
                "roc": self.roc.to_dict(orient="list"),
                "lift": self.lift.to_dict(orient="records"),
                "gains": self.gains.to_dict(orient="list"),
                "calibration_curve": {
                    k: v.to_dict(orient="records") for k, v in self.calibration_curve.items()
                },
                "score_distribution": self.score_distribution,
            }
        )


def jsonable(value: Any) -> Any:
    """Numpy scalars and containers to Python ones; non-finite floats to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else None
    return value


def ks_statistic(labels: np.ndarray, scores: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of positives and negatives."""
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    return float(np.max(tpr - fpr))


def lift_table(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Rows ranked by score and cut into ``bins`` groups: positives, rate, lift and cumulative gain per group."""
    order = np.argsort(-scores, kind="stable")
    groups = np.array_split(order, bins)
    base = labels.mean() if len(labels) else 0.0
    total_pos = labels.sum()
    rows, cum = [], 0.0
    for i, g in enumerate(groups, start=1):
        pos = float(labels[g].sum())
        cum += pos
        rate = pos / len(g) if len(g) else 0.0
        rows.append(
            {
                "decile": i,
                "rows": len(g),
                "positives": int(pos),
                "rate": rate,
                "lift": rate / base if base else float("nan"),
                "cumulative_gain": cum / total_pos if total_pos else float("nan"),
                "min_score": float(scores[g].min()) if len(g) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def gains_curve(labels: np.ndarray, scores: np.ndarray, points: int = GAINS_POINTS) -> pd.DataFrame:
    """Cumulative gains: the share of all positives among the top share of rows ranked by score.

    Starts at (0, 0) and ends at (1, 1); at most ``points`` + 1 points (evenly spaced in rows targeted).
    """
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    n = len(labels)
    if n == 0:
        return pd.DataFrame({"fraction_targeted": [0.0, 1.0], "fraction_captured": [0.0, 1.0]})
    order = np.argsort(-scores, kind="stable")
    captured = np.concatenate([[0.0], np.cumsum(labels[order])])
    total = captured[-1]
    k = np.arange(n + 1) if n <= points else np.unique(np.round(np.linspace(0, n, points + 1)).astype(int))
    y = captured[k] / total if total else k / n
    return pd.DataFrame({"fraction_targeted": k / n, "fraction_captured": y})


def reliability_curve(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> pd.DataFrame:
    """Calibration (reliability) curve: mean predicted probability vs observed positive rate, per uniform bin."""
    labels = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                {
                    "bin": b + 1,
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "rows": int(mask.sum()),
                    "mean_predicted": float(p[mask].mean()),
                    "observed_rate": float(labels[mask].mean()),
                }
            )
    columns = ["bin", "low", "high", "rows", "mean_predicted", "observed_rate"]
    return pd.DataFrame(rows, columns=columns)


def score_distribution(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = DISTRIBUTION_BINS
) -> dict[str, Any]:
    """Histogram counts (ints) of the probabilities of each class on ``bins`` uniform bins of [0, 1]."""
    labels = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    pos, _ = np.histogram(p[labels == 1], bins=edges)
    neg, _ = np.histogram(p[labels == 0], bins=edges)
    return {
        "edges": [float(e) for e in edges],
        "positive": [int(c) for c in pos],
        "negative": [int(c) for c in neg],
    }


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(successes: int, trials: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaNs for no trials)."""
    if trials <= 0:
        return float("nan"), float("nan")
    z = _z(level)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= trials else min(1.0, centre + half)
    return float(low), float(high)


def delong_auc(
    labels: np.ndarray, scores: np.ndarray, level: float = CONFIDENCE
) -> tuple[float, float, float, float]:
    """AUC with its DeLong (1988) standard error and normal interval: ``(auc, se, low, high)``.

    Ties count one half (midranks). Needs at least two rows of each class for a standard error.
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return (float("nan"),) * 4
    ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - rankdata(pos)) / n  # per positive: share of negatives scored lower (ties 1/2)
    v01 = 1.0 - (ranks[m:] - rankdata(neg)) / m  # per negative: share of positives scored higher
    auc = float(v10.mean())
    if m < 2 or n < 2:
        return auc, float("nan"), float("nan"), float("nan")
    se = float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))
    z = _z(level)
    return auc, se, float(max(0.0, auc - z * se)), float(min(1.0, auc + z * se))


def auc_interval(labels: np.ndarray, scores: np.ndarray, level: float = CONFIDENCE) -> dict[str, Any]:
    """The AUC's interval as the report states it: DeLong, unless DeLong degenerates.

    When every positive outscores every negative (or the reverse) DeLong's standard error is 0 and its
    interval a single point, which overstates what a small sample shows; then the interval is a Wilson
    interval of the AUC as a proportion out of the smaller class count (conservative).
    """
    auc, se, low, high = delong_auc(labels, scores, level)
    method = "DeLong"
    if se == 0.0:
        labels = np.asarray(labels, dtype=float)
        k = int(min(labels.sum(), len(labels) - labels.sum()))
        low, high = wilson_interval(int(round(auc * k)), k, level)
        method = "Wilson on the smaller class; DeLong degenerate, perfect separation"
    return {"estimate": auc, "low": low, "high": high, "se": se, "level": level, "method": method}


def f1_optimal_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability threshold that maximises F1 on the given (training) rows."""
    precision, recall, thresholds = skm.precision_recall_curve(labels, probabilities)
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1))])


def _decisions(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, Any]:
    predicted = (probabilities >= threshold).astype(float)
    return {
        "value": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "flagged_rows": int(predicted.sum()),
        "true_positives": int(((predicted == 1) & (labels == 1)).sum()),
        "correct_rows": int((predicted == labels).sum()),
    }


def small_sample_warnings(rows: int, positives: int) -> list[str]:
    """The report's warnings when the held-out rows are too few to trust the metrics to two decimals."""
    notes = []
    if rows < MIN_HELD_OUT_ROWS:
        notes.append(
            f"Only {rows:,} held-out rows (fewer than {MIN_HELD_OUT_ROWS}): the metrics below are uncertain; "
            "read them with their intervals."
        )
    minority = min(positives, rows - positives)
    if minority < MIN_MINORITY_ROWS:
        which = "positive" if positives <= rows - positives else "negative"
        notes.append(
            f"Only {minority:,} {which} rows among the held-out rows (fewer than {MIN_MINORITY_ROWS}): AUC, "
            "precision, recall and lift rest on very few cases."
        )
    return notes


def _log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    return float(skm.log_loss(labels, np.clip(p, _CLIP, 1 - _CLIP), labels=[0, 1]))


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float = 0.5,
    *,
    calibrator: Calibrator | None = None,
    positive_label: str = "1",
    train_labels: np.ndarray | None = None,
    train_scores: np.ndarray | None = None,
    level: float = CONFIDENCE,
) -> Evaluation:
    """Evaluate probability ``scores`` (``sigmoid`` of the joint logits) of the held-out rows.

    ``calibrator`` (fitted on the training rows) turns the scores into calibrated probabilities, on which
    ``threshold`` is applied; ``train_labels``/``train_scores`` (the training rows' labels and raw scores)
    add the F1-optimal threshold chosen on them. ``positive_label`` is the label value the 1s stand for.
    """
    from vfl.calibration import logit

    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    n = len(labels)
    positives = int(labels.sum())
    calibrated = calibrator.apply(logit(scores)) if calibrator is not None else None
    decided = calibrated if calibrated is not None else scores
    both_classes = len(np.unique(labels)) == 2
    default = _decisions(labels, decided, threshold)
    lift = lift_table(labels, scores)
    result: dict[str, Any] = {
        "held_out_rows": int(n),
        "held_out_positives": positives,
        "positive_rate": float(labels.mean()) if n else float("nan"),
        "auc": float(skm.roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "ks": ks_statistic(labels, scores) if both_classes else float("nan"),
        "top_decile_lift": float(lift["lift"].iloc[0]) if n else float("nan"),
        "threshold": float(threshold),
        "accuracy": default["accuracy"],
        "precision": default["precision"],
        "recall": default["recall"],
        "f1": default["f1"],
        "log_loss": _log_loss(labels, scores),
        "brier": float(np.mean((scores - labels) ** 2)) if n else float("nan"),
    }
    if calibrated is not None:
        result["log_loss_calibrated"] = _log_loss(labels, calibrated)
        result["brier_calibrated"] = float(np.mean((calibrated - labels) ** 2)) if n else float("nan")
    on = "calibrated probability" if calibrated is not None else "score"
    thresholds = {"default": {**default, "on": on, "chosen": "fixed"}}
    if train_labels is not None and train_scores is not None:
        train_labels = np.asarray(train_labels, dtype=float)
        train_p = np.asarray(train_scores, dtype=float)
        if calibrator is not None:
            train_p = calibrator.apply(logit(train_p))
        if len(np.unique(train_labels)) == 2:
            best = f1_optimal_threshold(train_labels, train_p)
            thresholds["f1_optimal"] = {
                **_decisions(labels, decided, best),
                "on": on,
                "chosen": "max F1 on training rows",
            }
    nan = float("nan")
    auc_iv = auc_interval(labels, scores, level) if both_classes else {"low": nan, "high": nan, "se": nan}
    intervals = {
        "auc": {
            **auc_iv,
            "estimate": result["auc"],
            "level": level,
            "method": auc_iv.get("method", "DeLong"),
        },
    }
    tp, flagged = default["true_positives"], default["flagged_rows"]
    correct = default["correct_rows"]
    for name, k, trials in (("accuracy", correct, n), ("precision", tp, flagged), ("recall", tp, positives)):
        lo, hi = wilson_interval(k, trials, level)
        intervals[name] = {
            "estimate": result[name],
            "low": lo,
            "high": hi,
            "level": level,
            "method": "Wilson",
        }
    curves = {"raw": reliability_curve(labels, scores)}
    if calibrated is not None:
        curves["calibrated"] = reliability_curve(labels, calibrated)
    distribution = {**score_distribution(labels, decided), "scores": on}
    if both_classes:
        fpr, tpr, _ = skm.roc_curve(labels, scores)
    else:
        fpr, tpr = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    return Evaluation(
        metrics=result,
        roc=pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        lift=lift,
        gains=gains_curve(labels, scores),
        calibration_curve=curves,
        score_distribution=distribution,
        intervals=intervals,
        thresholds=thresholds,
        positive_label=str(positive_label),
        calibration_method=calibrator.method if calibrator is not None else "none",
        warnings=small_sample_warnings(n, positives),
    )


def evaluate_held_out(
    labels: np.ndarray,
    z: np.ndarray,
    train_rows: np.ndarray,
    held_rows: np.ndarray,
    *,
    positive_label: str = "1",
    method: str = "platt",
) -> tuple[Calibrator, Evaluation]:
    """A binary model's evaluation at the guest from its joint logits ``z`` of every aligned row: the
    calibrator fitted on the training rows, and the held-out rows' scores evaluated with it (the
    F1-optimal threshold chosen on the training rows)."""
    from vfl.calibration import fit_calibrator, sigmoid

    calibrator = fit_calibrator(z[train_rows], labels[train_rows], method=method)
    scores = sigmoid(z)
    evaluation = evaluate(
        labels[held_rows], scores[held_rows], calibrator=calibrator, positive_label=positive_label,
        train_labels=labels[train_rows], train_scores=scores[train_rows],
    )  # fmt: skip
    return calibrator, evaluation
