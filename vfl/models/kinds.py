"""The model kinds a vfl model file can hold, and the per-kind math every protocol shares.

A model file carries ``model_kind`` (one of :data:`KINDS`); :func:`from_name` returns the kind and
:func:`from_model` reads it from a model mapping (files written before model kinds existed hold binary
logistic regressions). Each kind declares:

* ``check_labels(y)`` -> :class:`Labels` (encoded targets plus the class list for classifiers), or a
  one-line :class:`~vfl.errors.DataError`;
* ``link(z)``: scores from the joint linear predictor ``z`` (``(n,)``, or ``(n, K)`` for multi-class);
* ``residual(z, y)``: what the protocol encrypts and multiplies into ``X^T [[d]]`` -- the gradient of the
  kind's loss is ``X^T d / m``;
* ``loss(z, y)``: the mean training loss whose gradient that is;
* ``evaluate(y, scores)``: held-out metrics (a flat ``dict`` of floats, plus lists for tables).

=================  ===========================  ===================================  ======================
kind               link                         residual ``d``                       loss (mean over rows)
=================  ===========================  ===================================  ======================
``binary-lr``      sigmoid                      ``z/4 - s/2``, ``s = 2y - 1``        Taylor: ``log 2 - s z/2 + z^2/8``
``multiclass-lr``  OvR sigmoids, normalized     per class ``z_k/4 - s_k/2``          sum of K Taylor losses
``linear``         identity                     ``z - y``                            ``(z - y)^2 / 2``
``poisson``        ``exp(z + log exposure)``    ``exp(z + log exposure) - y``        ``exp(eta) - y eta``
=================  ===========================  ===================================  ======================

Multi-class labels are class indices ``0 .. K-1`` after encoding (the sorted distinct target values);
``MAX_CLASSES`` (16) bounds K because every class costs one packed slot per row and one weight vector
per party (see :mod:`vfl.models.packing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

from vfl.errors import DataError
from vfl.options import TrainOptions

MAX_CLASSES = 16
"""Largest number of classes ``multiclass-lr`` accepts."""

DEFAULT_KIND = "binary-lr"
"""The kind of a model file that has no ``model_kind`` field (written before model kinds existed)."""


@dataclass(frozen=True)
class Labels:
    """Validated targets: ``values`` as the protocol uses them, ``classes`` the original class values."""

    values: np.ndarray
    classes: tuple[Any, ...] | None = None

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)


def _numeric(y: Any, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"the {what} target must be one column, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"the {what} target is empty; there are no rows to train on")
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            bad = next((v for v in arr.tolist() if not _is_number(v)), arr[0])
            raise DataError(
                f"the {what} target must be numeric, but it holds {bad!r}; encode it as numbers first"
            ) from None
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        pos = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise DataError(f"the {what} target has a missing or infinite value at row {pos}; drop or fill it")
    return arr


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _offset(exposure: Any, n: int) -> np.ndarray | float:
    """``log(exposure)`` (0 without exposure); exposures must be positive and finite."""
    if exposure is None:
        return 0.0
    e = np.asarray(exposure, dtype=np.float64)
    if e.shape not in ((), (n,)):
        raise DataError(f"exposure has shape {e.shape}, expected ({n},)")
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise DataError("exposure must be positive and finite for every row (it enters as log(exposure))")
    return np.log(e)


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


class ModelKind:
    """Base class; see the module docstring for the contract."""

    name: str = ""
    description: str = ""
    default_options: Mapping[str, Any] = {}
    """Training options (``TrainOptions`` fields) that reach the accuracy targets of tests/models."""

    def options(self, **overrides: Any) -> TrainOptions:
        """``TrainOptions`` with this kind's defaults, then ``overrides``."""
        return TrainOptions(**{**self.default_options, **overrides})

    def check_labels(self, y: Any) -> Labels:  # pragma: no cover - abstract
        raise NotImplementedError

    def link(self, z: np.ndarray, exposure: Any = None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def residual(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def loss(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> float:  # pragma: no cover
        raise NotImplementedError

    def evaluate(self, y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"ModelKind({self.name!r})"


class BinaryLR(ModelKind):
    name = "binary-lr"
    description = "logistic regression on the Taylor loss (DESIGN.md §6), labels 0/1"
    default_options: Mapping[str, Any] = {}  # TrainOptions' own defaults (DESIGN.md §6)

    def check_labels(self, y: Any) -> Labels:
        arr = _numeric(y, "binary")
        values = set(np.unique(arr).tolist())
        if not values <= {0.0, 1.0}:
            extra = sorted(values - {0.0, 1.0})[:3]
            raise DataError(
                f"binary-lr labels must be 0 or 1, found {extra}; use multiclass-lr for more than two classes"
            )
        if len(values) < 2:
            raise DataError(f"the binary target has one class only ({int(arr[0])}); both 0 and 1 are needed")
        return Labels(arr, (0, 1))

    def link(self, z: np.ndarray, exposure: Any = None) -> np.ndarray:
        return sigmoid(z)

    def residual(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> np.ndarray:
        s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
        return np.asarray(z, dtype=np.float64) / 4.0 - s / 2.0

    def loss(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> float:
        z = np.asarray(z, dtype=np.float64)
        s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
        return float(np.mean(np.log(2.0) - s * z / 2.0 + z * z / 8.0))

    def evaluate(self, y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        from vfl.metrics import evaluate

        return dict(evaluate(np.asarray(y), np.asarray(scores)).metrics)


def one_hot(y: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indicator matrix of class indices ``y``."""
    idx = np.asarray(y).astype(np.int64)
    out = np.zeros((len(idx), k))
    out[np.arange(len(idx)), idx] = 1.0
    return out


# The gradient kinds' shared training defaults (Linear runs longer: see its class).
_ADAM_DEFAULTS: Mapping[str, Any] = {
    "optimizer": "adam",
    "learning_rate": 0.1,
    "schedule": "constant",
    "batch_size": 0,
    "max_epochs": 300,
    "tol": 1e-7,
    "patience": 5,
}


class MulticlassLR(ModelKind):
    name = "multiclass-lr"
    description = f"one-vs-rest logistic regression on the Taylor loss, 2..{MAX_CLASSES} classes"
    default_options = dict(_ADAM_DEFAULTS)

    def check_labels(self, y: Any) -> Labels:
        arr = np.asarray(y)
        if arr.ndim != 1 or arr.size == 0:
            raise DataError(f"the multi-class target must be one non-empty column, got shape {arr.shape}")
        if arr.dtype.kind in "OUS":
            if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in arr.tolist()):
                raise DataError("the multi-class target has missing values; drop or fill them")
            if not all(_is_number(v) for v in arr.tolist()):
                bad = next(v for v in arr.tolist() if not _is_number(v))
                raise DataError(
                    f"the multi-class target must be numeric class codes, but it holds {bad!r}; "
                    "map class names to integers first"
                )
        num = _numeric(arr, "multi-class")
        if not np.all(num == np.rint(num)):
            raise DataError("multi-class labels must be integer class codes; found non-integer values")
        classes = np.unique(num)
        if len(classes) < 2:
            raise DataError(
                f"the multi-class target has one class only ({int(classes[0])}); nothing to learn"
            )
        if len(classes) > MAX_CLASSES:
            raise DataError(
                f"the multi-class target has {len(classes)} classes; multiclass-lr supports at most "
                f"{MAX_CLASSES} (merge rare classes or train one-vs-rest models separately)"
            )
        codes = np.searchsorted(classes, num)
        return Labels(codes.astype(np.int64), tuple(int(c) for c in classes))

    def link(self, z: np.ndarray, exposure: Any = None) -> np.ndarray:
        """OvR probabilities ``sigmoid(z_k)`` normalized to sum to one per row (scikit-learn's OvR rule)."""
        p = sigmoid(np.asarray(z, dtype=np.float64))
        return p / p.sum(axis=1, keepdims=True)

    def residual(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        s = 2.0 * one_hot(y, z.shape[1]) - 1.0
        return z / 4.0 - s / 2.0

    def loss(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> float:
        """Sum over classes of the mean per-class Taylor loss."""
        z = np.asarray(z, dtype=np.float64)
        s = 2.0 * one_hot(y, z.shape[1]) - 1.0
        return float(np.sum(np.mean(np.log(2.0) - s * z / 2.0 + z * z / 8.0, axis=0)))

    def evaluate(self, y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        """Accuracy, macro/micro F1, log loss, per-class OvR AUC and the confusion matrix (rows = truth)."""
        y = np.asarray(y).astype(np.int64)
        p = np.asarray(scores, dtype=np.float64)
        k = p.shape[1]
        labels = list(range(k))
        pred = np.argmax(p, axis=1)
        aucs = []
        for c in labels:
            truth = (y == c).astype(int)
            aucs.append(
                float(skm.roc_auc_score(truth, p[:, c])) if 0 < truth.sum() < len(y) else float("nan")
            )
        clipped = np.clip(p, 1e-12, 1.0)
        return {
            "held_out_rows": len(y),
            "accuracy": float(skm.accuracy_score(y, pred)),
            "f1_macro": float(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "f1_micro": float(skm.f1_score(y, pred, average="micro", labels=labels, zero_division=0)),
            "log_loss": float(skm.log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)),
            "auc_ovr": aucs,
            "auc_ovr_macro": float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan"),
            "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    return {
        "held_out_rows": len(y),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan"),
    }


class Linear(ModelKind):
    name = "linear"
    description = "linear regression on the exact quadratic loss"
    default_options = {**_ADAM_DEFAULTS, "max_epochs": 1000}

    def check_labels(self, y: Any) -> Labels:
        return Labels(_numeric(y, "regression"))

    def link(self, z: np.ndarray, exposure: Any = None) -> np.ndarray:
        return np.asarray(z, dtype=np.float64)

    def residual(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) - np.asarray(y, dtype=np.float64)

    def loss(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> float:
        r = np.asarray(z, dtype=np.float64) - np.asarray(y, dtype=np.float64)
        return float(np.mean(r * r) / 2.0)

    def evaluate(self, y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        return regression_metrics(y, scores)


class Poisson(ModelKind):
    name = "poisson"
    description = "Poisson regression (log link) for counts, with an optional exposure offset log(exposure)"
    default_options = dict(_ADAM_DEFAULTS)

    def check_labels(self, y: Any) -> Labels:
        arr = _numeric(y, "count")
        if np.any(arr < 0):
            pos = int(np.flatnonzero(arr < 0)[0])
            raise DataError(f"poisson targets are counts, but row {pos} holds the negative value {arr[pos]}")
        if not np.all(arr == np.rint(arr)):
            pos = int(np.flatnonzero(arr != np.rint(arr))[0])
            raise DataError(
                f"poisson targets are counts, but row {pos} holds the non-integer value {arr[pos]}; "
                "use linear for continuous targets"
            )
        if arr.size and not np.any(arr > 0):
            raise DataError("poisson targets are all zero: there is no rate to fit; check the label column")
        return Labels(arr)

    def link(self, z: np.ndarray, exposure: Any = None) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        return np.exp(z + _offset(exposure, len(z)))

    def residual(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> np.ndarray:
        return self.link(z, exposure) - np.asarray(y, dtype=np.float64)

    def loss(self, z: np.ndarray, y: np.ndarray, exposure: Any = None) -> float:
        """Mean negative log-likelihood without the ``log y!`` constant: ``exp(eta) - y eta``."""
        z = np.asarray(z, dtype=np.float64)
        eta = z + _offset(exposure, len(z))
        return float(np.mean(np.exp(eta) - np.asarray(y, dtype=np.float64) * eta))

    def evaluate(self, y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        y = np.asarray(y, dtype=np.float64)
        mu = np.maximum(np.asarray(scores, dtype=np.float64), 1e-12)
        return {
            "held_out_rows": len(y),
            "mean_poisson_deviance": float(skm.mean_poisson_deviance(y, mu)),
            "mae": float(skm.mean_absolute_error(y, mu)),
        }


KINDS: dict[str, ModelKind] = {k.name: k for k in (BinaryLR(), MulticlassLR(), Linear(), Poisson())}


def from_name(kind: str) -> ModelKind:
    """The registered kind called ``kind``; DataError listing the known kinds otherwise."""
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise DataError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}") from None


def from_model(model: Mapping[str, Any]) -> ModelKind:
    """The kind recorded in a model file's ``model_kind`` field (``binary-lr`` when the field is absent)."""
    return from_name(model.get("model_kind", DEFAULT_KIND))
