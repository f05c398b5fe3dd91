"""Reference trainers with each kind's default options against scikit-learn on the same 80/20 splits.

Regression and counts use the FATE example data (``../shared/data/fate``; skipped if absent): student
grades and motor speed (RMSE within 1 % of ``LinearRegression``), dvisits doctor visits (mean Poisson
deviance within 2 % of ``PoissonRegressor``). There is no multi-class FATE set, so multi-class uses
``make_classification`` with 4 classes (accuracy within 0.02 of one-vs-rest ``LogisticRegression``).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LinearRegression, LogisticRegression, PoissonRegressor
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier

from tests.models.conftest import fate_split
from vfl.models.kinds import from_name
from vfl.models.reference import (
    predict,
    train_linear_reference,
    train_ovr_reference,
    train_poisson_reference,
)

PARTIES = ["guest", "host"]


def _features(blocks: list[np.ndarray]) -> np.ndarray:
    return np.hstack(blocks)[:, 1:]  # without the intercept column (scikit-learn fits its own)


@pytest.mark.parametrize("name", ["student", "motor"])
def test_linear_matches_sklearn_rmse(name: str) -> None:
    train, test, y_train, y_test = fate_split(name)
    kind = from_name("linear")
    weights, _ = train_linear_reference(train, y_train, kind.options(), PARTIES)
    ours = kind.evaluate(y_test, predict("linear", test, weights))["rmse"]
    sk = LinearRegression().fit(_features(train), y_train)
    theirs = kind.evaluate(y_test, sk.predict(_features(test)))["rmse"]
    print(f"{name}: RMSE reference {ours:.5f}, sklearn {theirs:.5f}")
    assert abs(ours - theirs) <= 0.01 * theirs


def test_poisson_matches_sklearn_deviance() -> None:
    train, test, y_train, y_test = fate_split("dvisits")
    kind = from_name("poisson")
    kind.check_labels(y_train)
    weights, _ = train_poisson_reference(train, y_train, kind.options(), PARTIES)
    ours = kind.evaluate(y_test, predict("poisson", test, weights))["mean_poisson_deviance"]
    sk = PoissonRegressor(alpha=1e-4, max_iter=1000).fit(_features(train), y_train)
    theirs = kind.evaluate(y_test, sk.predict(_features(test)))["mean_poisson_deviance"]
    print(f"dvisits: mean Poisson deviance reference {ours:.5f}, sklearn {theirs:.5f}")
    assert abs(ours - theirs) <= 0.02 * theirs


def test_multiclass_matches_sklearn_ovr_accuracy() -> None:
    x, y = make_classification(
        n_samples=2000, n_features=20, n_informative=10, n_redundant=4, n_classes=4, random_state=0
    )
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0)
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    kind = from_name("multiclass-lr")
    labels = kind.check_labels(y_tr)

    def split(a: np.ndarray) -> list[np.ndarray]:
        return [np.column_stack([np.ones(len(a)), a[:, :8]]), a[:, 8:]]

    weights, _ = train_ovr_reference(split(x_tr), labels.values, 4, kind.options(), PARTIES)
    ours = kind.evaluate(y_te, predict("multiclass-lr", split(x_te), weights))
    sk = OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(x_tr, y_tr)
    theirs = kind.evaluate(y_te, sk.predict_proba(x_te))
    print(f"make_classification: accuracy reference {ours['accuracy']:.4f}, sklearn {theirs['accuracy']:.4f}")
    assert ours["accuracy"] >= theirs["accuracy"] - 0.02
