"""Evaluation of scores against labels at the guest: the metrics a marketer and a risk team ask for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn import metrics as skm


@dataclass(frozen=True)
class Evaluation:
    """Held-out metrics, the ROC curve and the lift/gains table by decile."""

    metrics: dict[str, float]
    roc: pd.DataFrame  # columns fpr, tpr
    lift: pd.DataFrame  # one row per decile


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


def evaluate(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> Evaluation:
    """AUC, KS, accuracy, precision, recall, F1 and log loss of probability ``scores``."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    predicted = (scores >= threshold).astype(float)
    both_classes = len(np.unique(labels)) == 2
    result = {
        "held_out_rows": len(labels),
        "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
        "auc": float(skm.roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "ks": ks_statistic(labels, scores) if both_classes else float("nan"),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "log_loss": float(skm.log_loss(labels, np.clip(scores, 1e-12, 1 - 1e-12), labels=[0, 1])),
    }
    if both_classes:
        fpr, tpr, _ = skm.roc_curve(labels, scores)
    else:
        fpr, tpr = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    return Evaluation(result, pd.DataFrame({"fpr": fpr, "tpr": tpr}), lift_table(labels, scores))
