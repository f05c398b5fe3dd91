"""The guest-only baseline: what the guest's own columns achieve without any partner, in plaintext.

The guest fits a scikit-learn ``LogisticRegression`` on its own standardized model columns, on the training
rows only, and scores the same held-out rows as the federated model. The report puts the two side by side
(AUC with its interval, top-decile lift), which answers "what does the partner's data add?". Nothing here
touches a partner: it runs on the guest's matrix and labels alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vfl.errors import DataError
from vfl.metrics import CONFIDENCE, auc_interval, jsonable, lift_table


@dataclass(frozen=True)
class Baseline:
    """Held-out performance of the guest-only plaintext model."""

    auc: float
    auc_low: float
    auc_high: float
    top_decile_lift: float
    held_out_rows: int
    training_rows: int
    auc_method: str = "DeLong"
    columns: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list, repr=False)  # held-out probabilities, in held-out order

    def to_dict(self, *, with_scores: bool = False) -> dict[str, Any]:
        data = jsonable(asdict(self))
        if not with_scores:
            data.pop("scores")
        return data


def fit_baseline(
    matrix: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    held_rows: np.ndarray,
    *,
    columns: list[str] | None = None,
    level: float = CONFIDENCE,
    seed: int = 0,
) -> Baseline:
    """Fit on ``matrix[train_rows]`` (the guest's columns), evaluate on ``matrix[held_rows]``.

    Constant columns (such as the intercept column of ones) are dropped; the rest are standardized with the
    training rows' mean and deviation (a no-op on columns the guest's preprocessor already scaled).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    matrix = np.asarray(matrix, dtype=float)
    labels = np.asarray(labels, dtype=float)
    if matrix.ndim != 2 or len(matrix) != len(labels):
        raise DataError(
            f"the baseline needs one matrix row per label, got {matrix.shape} and {len(labels)} labels"
        )
    names = list(columns) if columns is not None else [f"x{i}" for i in range(matrix.shape[1])]
    train, held = matrix[train_rows], matrix[held_rows]
    keep = np.ptp(train, axis=0) > 0 if len(train) else np.zeros(matrix.shape[1], dtype=bool)
    y_train, y_held = labels[train_rows], labels[held_rows]
    if len(np.unique(y_train)) != 2:
        raise DataError("the guest-only baseline needs training rows of both classes")
    if keep.any():
        scaler = StandardScaler().fit(train[:, keep])
        model = LogisticRegression(max_iter=1000, random_state=seed)
        model.fit(scaler.transform(train[:, keep]), y_train)
        scores = model.predict_proba(scaler.transform(held[:, keep]))[:, 1]
    else:  # no usable column of its own: the guest can only predict the base rate
        scores = np.full(len(held), y_train.mean())
    iv = auc_interval(y_held, scores, level)
    lift = lift_table(y_held, scores)
    return Baseline(
        auc=iv["estimate"],
        auc_low=iv["low"],
        auc_high=iv["high"],
        auc_method=iv["method"],
        top_decile_lift=float(lift["lift"].iloc[0]) if len(held) else float("nan"),
        held_out_rows=int(len(held)),
        training_rows=int(len(train)),
        columns=[n for n, k in zip(names, keep, strict=True) if k],
        scores=[float(s) for s in scores],
    )
