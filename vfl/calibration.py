"""Calibration of the joint model's scores into probabilities, fitted by the guest alone.

The federated model is trained on the Taylor approximation of the logistic loss, so ``sigmoid(z)`` of its
joint logit ``z`` ranks rows well but is not a probability (its log loss is far above a plain logistic
regression's on the same rows). The guest, which holds the labels, fits a one-dimensional map from ``z`` to
a probability on its *training* rows, locally: nothing is exchanged and no partner learns anything new.

- ``platt``: ``p = sigmoid(slope * z + intercept)``, fitted with Platt's smoothed targets (the math of
  scikit-learn's ``CalibratedClassifierCV(method="sigmoid")``), so the fit stays finite on separable rows.
- ``isotonic``: a monotone step function (scikit-learn ``IsotonicRegression``), stored as its
  breakpoints and applied by linear interpolation between them, clipped at the ends (what
  ``IsotonicRegression(out_of_bounds="clip").predict`` does).
- ``none``: ``p = sigmoid(z)``, the uncalibrated scores.

A calibrator is stored as a JSON-able dict (``to_dict``/``from_dict``, an exact round trip) so it can travel
in the guest's model shard and be applied again at scoring time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl.errors import DataError

METHODS = ("platt", "isotonic", "none")
FORMAT = "vfl-calibrator/1"
_EPS = 1e-15


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def logit(p: np.ndarray) -> np.ndarray:
    """The joint logit ``z`` back from probability scores ``sigmoid(z)`` (clipped so 0 and 1 stay finite)."""
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from joint logits ``z`` to probabilities. Build it with :func:`fit_calibrator`."""

    method: str
    training_rows: int = 0
    slope: float = 1.0  # platt
    intercept: float = 0.0  # platt
    breakpoints: list[float] = field(default_factory=list)  # isotonic: z values, increasing
    values: list[float] = field(default_factory=list)  # isotonic: probabilities at the breakpoints

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DataError(f"calibration method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "isotonic" and (not self.breakpoints or len(self.breakpoints) != len(self.values)):
            raise DataError("an isotonic calibrator needs as many breakpoints as values, and at least one")

    def apply(self, z: np.ndarray) -> np.ndarray:
        """Probabilities for joint logits ``z``."""
        z = np.asarray(z, dtype=float)
        if self.method == "platt":
            return sigmoid(self.slope * z + self.intercept)
        if self.method == "isotonic":
            return np.interp(z, np.asarray(self.breakpoints), np.asarray(self.values))
        return sigmoid(z)

    def describe(self) -> str:
        if self.method == "platt":
            sign = "-" if self.intercept < 0 else "+"
            return f"Platt scaling: p = sigmoid({self.slope:.4g} * z {sign} {abs(self.intercept):.4g})"
        if self.method == "isotonic":
            return f"isotonic regression with {len(self.breakpoints)} breakpoints"
        return "none: p = sigmoid(z)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "training_rows": int(self.training_rows),
            "slope": float(self.slope),
            "intercept": float(self.intercept),
            "breakpoints": [float(v) for v in self.breakpoints],
            "values": [float(v) for v in self.values],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        if data.get("format", FORMAT) != FORMAT:
            raise DataError(f"unknown calibrator format {data.get('format')!r} (this version reads {FORMAT})")
        return cls(
            method=str(data["method"]),
            training_rows=int(data.get("training_rows", 0)),
            slope=float(data.get("slope", 1.0)),
            intercept=float(data.get("intercept", 0.0)),
            breakpoints=[float(v) for v in data.get("breakpoints", [])],
            values=[float(v) for v in data.get("values", [])],
        )


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt (2000) with smoothed targets; Newton's method with step halving on the 2-parameter log loss."""
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    t = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    X = np.column_stack([z, np.ones_like(z)])

    def loss(theta: np.ndarray) -> float:
        u = X @ theta
        # sum of log(1 + exp(u)) - t * u, stably
        return float(np.sum(np.logaddexp(0.0, u) - t * u))

    theta = np.array([0.0, np.log((n_pos + 1.0) / (n_neg + 1.0))])
    current = loss(theta)
    for _ in range(100):
        p = sigmoid(X @ theta)
        grad = X.T @ (p - t)
        w = p * (1 - p)
        hess = X.T @ (X * w[:, None]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-10:
            candidate = theta - size * step
            value = loss(candidate)
            if value <= current:
                break
            size /= 2
        else:
            break
        converged = abs(current - value) <= 1e-12 * max(1.0, abs(current))
        theta, current = candidate, value
        if converged or np.max(np.abs(grad)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def fit_calibrator(z: np.ndarray, labels: np.ndarray, method: str = "platt") -> Calibrator:
    """Fit a calibrator on the guest's training rows: their joint logits ``z`` and 0/1 ``labels``."""
    if method not in METHODS:
        raise DataError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    z = np.asarray(z, dtype=float).ravel()
    y = np.asarray(labels, dtype=float).ravel()
    if len(z) != len(y):
        raise DataError(f"calibration needs one label per score, got {len(z)} scores and {len(y)} labels")
    if not np.all(np.isfinite(z)):
        raise DataError("calibration scores must be finite (pass joint logits, not probabilities of 0 or 1)")
    if method == "none":
        return Calibrator("none", training_rows=len(z))
    if len(np.unique(y)) != 2:
        raise DataError("calibration needs training rows of both classes")
    if method == "platt":
        slope, intercept = _platt(z, y)
        return Calibrator("platt", training_rows=len(z), slope=slope, intercept=intercept)
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(z, y)
    return Calibrator(
        "isotonic",
        training_rows=len(z),
        breakpoints=[float(v) for v in iso.X_thresholds_],
        values=[float(v) for v in iso.y_thresholds_],
    )
