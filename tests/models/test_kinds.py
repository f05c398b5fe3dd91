"""The model-kind registry: label checks, links, residuals (= loss gradients) and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from vfl.errors import DataError
from vfl.models import KINDS, MAX_CLASSES, from_model, from_name


def test_registry_names_and_unknown_kind() -> None:
    assert list(KINDS) == ["binary-lr", "multiclass-lr", "linear", "poisson"]
    assert from_name("poisson").name == "poisson"
    with pytest.raises(DataError, match="known kinds: binary-lr, multiclass-lr, linear, poisson"):
        from_name("svm")
    assert from_model({}).name == "binary-lr"  # files from before model kinds
    assert from_model({"model_kind": "linear"}).name == "linear"


@pytest.mark.parametrize(
    ("kind", "labels", "message"),
    [
        ("binary-lr", ["a", "b"], "must be numeric"),
        ("binary-lr", [1, 1, 1], "one class only"),
        ("binary-lr", [0, 1, 2], "must be 0 or 1"),
        ("multiclass-lr", ["cat", "dog"], "must be numeric"),
        ("multiclass-lr", [3, 3], "one class only"),
        ("multiclass-lr", list(range(MAX_CLASSES + 1)), f"at most {MAX_CLASSES}"),
        ("multiclass-lr", [0.5, 1.0], "integer class codes"),
        ("linear", ["x", 1.0], "must be numeric"),
        ("linear", [1.0, np.nan], "missing or infinite"),
        ("poisson", [0, -1, 2], "negative value"),
        ("poisson", [0, 1.5], "non-integer"),
        ("poisson", [0, 0, 0], "all zero"),
    ],
)
def test_label_checks(kind: str, labels, message: str) -> None:
    with pytest.raises(DataError, match=message):
        from_name(kind).check_labels(np.asarray(labels, dtype=object if isinstance(labels[0], str) else None))


def test_label_encoding() -> None:
    lab = from_name("multiclass-lr").check_labels(np.array([7, 3, 5, 3]))
    assert lab.classes == (3, 5, 7) and lab.values.tolist() == [2, 0, 1, 0] and lab.n_classes == 3
    assert from_name("poisson").check_labels([0, 2, 5]).values.tolist() == [0.0, 2.0, 5.0]
    assert from_name("binary-lr").check_labels(np.array(["0", "1"], dtype=object)).classes == (0, 1)


def _numeric_gradient(kind, z, y, exposure=None, h=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        g[idx] = (kind.loss(zp, y, exposure) - kind.loss(zm, y, exposure)) / (2 * h)
    return g * len(z)  # loss is a mean over rows; residual is the per-row derivative


@pytest.mark.parametrize("name", ["binary-lr", "multiclass-lr", "linear", "poisson"])
def test_residual_is_the_loss_gradient(name: str) -> None:
    rng = np.random.default_rng(3)
    kind = from_name(name)
    n = 7
    if name == "multiclass-lr":
        z, y = rng.normal(size=(n, 3)), rng.integers(0, 3, n)
    elif name == "binary-lr":
        z, y = rng.normal(size=n), rng.integers(0, 2, n).astype(float)
    elif name == "linear":
        z, y = rng.normal(size=n), rng.normal(size=n)
    else:
        z, y = rng.normal(size=n) * 0.5, rng.poisson(1.0, n).astype(float)
    np.testing.assert_allclose(kind.residual(z, y), _numeric_gradient(kind, z, y), rtol=1e-5, atol=1e-6)


def test_exact_residual_formulas() -> None:
    z = np.array([-2.0, 0.0, 1.0])
    y = np.array([1.0, 0.0, 1.0])
    np.testing.assert_array_equal(from_name("binary-lr").residual(z, y), z / 4 - (2 * y - 1) / 2)
    np.testing.assert_array_equal(from_name("linear").residual(z, y), z - y)
    exposure = np.array([1.0, 2.0, 0.5])
    pois = from_name("poisson")
    np.testing.assert_allclose(pois.residual(z, y, exposure), exposure * np.exp(z) - y, rtol=1e-15)
    np.testing.assert_allclose(pois.link(z, exposure), exposure * np.exp(z), rtol=1e-15)
    zz = np.array([[1.0, -1.0, 0.0]])
    d = from_name("multiclass-lr").residual(zz, np.array([2]))
    np.testing.assert_array_equal(d, [[0.25 + 0.5, -0.25 + 0.5, 0.0 - 0.5]])
    with pytest.raises(DataError, match="exposure"):
        pois.link(z, np.array([1.0, 0.0, 1.0]))


def test_links() -> None:
    z = np.array([-800.0, 0.0, 800.0])
    np.testing.assert_array_equal(from_name("binary-lr").link(z), [0.0, 0.5, 1.0])
    p = from_name("multiclass-lr").link(np.array([[0.0, 0.0], [3.0, -3.0]]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] == 0.5 and p[1, 0] == pytest.approx(1 / (1 + np.exp(-3.0)))


def test_metrics() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    scores = np.eye(3)[y] * 0.6 + 0.4 / 3
    m = from_name("multiclass-lr").evaluate(y, scores)
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["f1_micro"] == 1.0
    assert m["auc_ovr"] == [1.0, 1.0, 1.0]
    assert np.trace(np.array(m["confusion_matrix"])) == 60
    r = from_name("linear").evaluate(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert r["rmse"] == pytest.approx(np.sqrt(1 / 3)) and r["mae"] == pytest.approx(1 / 3)
    assert r["r2"] == pytest.approx(0.5)
    pm = from_name("poisson").evaluate(np.array([0.0, 2.0]), np.array([1.0, 2.0]))
    assert pm["mean_poisson_deviance"] == pytest.approx(1.0) and pm["mae"] == pytest.approx(0.5)
    b = from_name("binary-lr").evaluate(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.8, 0.3]))
    assert b["auc"] == 1.0


def test_default_options_are_valid() -> None:
    for kind in KINDS.values():
        opts = kind.options(seed=7)
        assert opts.seed == 7
