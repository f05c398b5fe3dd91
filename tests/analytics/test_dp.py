"""Noise statistics, the epsilon split, suppression and the options' errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vfl.analytics import dp
from vfl.errors import ConfigError

DRAWS = 20_000


def _moments(p: float) -> tuple[float, float]:
    """Exact variance and fourth moment of the discrete Laplace with parameter p (truncated sums)."""
    z = np.arange(-4000, 4001, dtype=float)
    w = (1 - p) / (1 + p) * p ** np.abs(z)
    return float((w * z**2).sum()), float((w * z**4).sum())


@pytest.mark.parametrize(("epsilon", "sensitivity"), [(1.0, 1), (0.3, 1), (2.0, 5)])
def test_noise_mean_and_variance_match_the_discrete_laplace(epsilon: float, sensitivity: int) -> None:
    z = dp.discrete_laplace(epsilon, sensitivity, DRAWS).astype(float)
    p = dp.noise_parameter(epsilon, sensitivity)
    var = 2 * p / (1 - p) ** 2
    assert math.isclose(dp.noise_variance(epsilon, sensitivity), var)
    exact_var, mu4 = _moments(p)
    assert math.isclose(exact_var, var, rel_tol=1e-9)
    # 6 standard errors: a false failure has probability ~2e-9 per check
    assert abs(z.mean()) < 6 * math.sqrt(var / DRAWS)
    assert abs(z.var() - var) < 6 * math.sqrt((mu4 - var**2) / DRAWS)
    # the mass at zero is (1 - p) / (1 + p)
    p0 = (1 - p) / (1 + p)
    assert abs((z == 0).mean() - p0) < 6 * math.sqrt(p0 * (1 - p0) / DRAWS)


def test_noise_share_has_a_test_only_off_switch_and_stays_within_its_limit() -> None:
    assert dp.noise_share(1.0, [1, 1, 1], disable_noise_for_tests=True) == [0, 0, 0]
    shares = dp.noise_share(0.5, [1] * 500)
    assert len(set(shares)) > 5
    assert max(map(abs, shares)) <= dp.noise_limit(0.5, 1)
    # T is far out in the tail: 2 p^(T+1) / (1 + p) < 2^-64
    t, p = dp.noise_limit(0.5, 1), dp.noise_parameter(0.5, 1)
    assert 2 * p ** (t + 1) / (1 + p) < 2.0**-64


def test_sampler_refuses_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        dp.discrete_laplace(0.0)
    with pytest.raises(ConfigError, match="sensitivity"):
        dp.discrete_laplace(1.0, 0)


def test_suppression_withholds_counts_and_sums_alike() -> None:
    counts = np.array([[25.0, 19.0], [20.0, -3.0]])
    sums = {"spend": np.array([[500.0, 100.0], [40.0, 7.0]])}
    rel = dp.suppress(counts, sums, k=20)
    assert rel.released.tolist() == [[True, False], [True, False]]
    assert (rel.suppressed == ~rel.released).all()
    assert np.isnan(rel.counts[~rel.released]).all()
    assert np.isnan(rel.sums["spend"][~rel.released]).all()
    assert np.isnan(rel.means["spend"][~rel.released]).all()
    assert rel.counts[0, 0] == 25 and rel.sums["spend"][1, 0] == 40
    assert rel.means["spend"][0, 0] == pytest.approx(20.0) and rel.means["spend"][1, 0] == pytest.approx(2.0)
    recs = dp.as_records(rel, ["a", "b"], ["x", "y"])
    assert recs[1] == {
        "row": "a",
        "column": "y",
        "suppressed": True,
        "count": None,
        "sum_spend": None,
        "mean_spend": None,
    }
    assert recs[0]["count"] == 25.0 and not recs[0]["suppressed"]
    with pytest.raises(ConfigError, match="k must"):
        dp.suppress(counts, sums, k=1)


def _options(**kw) -> dp.AudienceOptions:
    base = {
        "segments": {"retailer": ["age_band"], "bank": ["income_band"]},
        "metrics": {"retailer": ["spend"], "bank": ["balance"]},
        "bounds": {"spend": [0, 1000], "balance": [-5000, 20000]},
    }
    return dp.AudienceOptions(**{**base, **kw})


def test_options_have_safe_defaults() -> None:
    opt = dp.AudienceOptions()
    assert opt.epsilon == 1.0 and opt.k == 20 and opt.split == "measures"
    assert "noise" not in opt.to_dict()
    assert dp.AudienceOptions.from_dict(_options().to_dict()) == _options()


@pytest.mark.parametrize(
    ("kw", "option", "words"),
    [
        ({"epsilon": 0}, "epsilon", "positive"),
        ({"epsilon": -1.0}, "epsilon", "positive"),
        ({"epsilon": float("inf")}, "epsilon", "positive"),
        ({"k": 1}, "k", ">= 2"),
        ({"bounds": {"spend": [0, 1000]}}, "bounds", "'balance' of 'bank' has no bounds"),
        ({"bounds": {"spend": [5, 1], "balance": [0, 1]}}, "bounds", "lo < hi"),
        ({"split": "whatever"}, "split", "measures"),
        ({"split": {"count": 1.0}}, "split", "no weight"),
        (
            {"metrics": {"retailer": ["spend"], "bank": ["spend"]}, "bounds": {"spend": [0, 1]}},
            "metrics",
            "rename",
        ),
    ],
)
def test_options_errors_name_the_option(kw: dict, option: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _options(**kw)
    assert f"[audience] {option}:" in str(err.value)
    assert words in str(err.value)


def test_too_many_categories_and_noise_switches_are_refused() -> None:
    opt = _options(max_categories=4)
    opt.check_categories("bank", "income_band", 4)
    with pytest.raises(ConfigError, match=r"max_categories: segment column 'income_band' of 'bank' has 5"):
        opt.check_categories("bank", "income_band", 5)
    with pytest.raises(ConfigError, match="unknown option"):
        dp.AudienceOptions.from_dict({"epsilon": 1.0, "noise": False})


def test_epsilon_split_adds_up_to_the_job_epsilon() -> None:
    opt = _options(epsilon=1.2)
    measures = ["count", "balance", "spend"]
    cells = 6 * 5
    per = {m: opt.epsilon_per_number(m, measures, cells) for m in measures}
    # parallel over disjoint cells, sequential over measures: one customer's numbers add up to epsilon
    assert sum(per.values()) == pytest.approx(1.2)
    numbers = _options(epsilon=1.2, split="numbers")
    assert sum(numbers.epsilon_per_number(m, measures, cells) for m in measures) * cells == pytest.approx(1.2)
    weighted = _options(split={"count": 2, "spend": 1, "balance": 1})
    assert weighted.epsilon_per_number("count", measures, cells) == pytest.approx(0.5)
    assert opt.epsilon_per_number("count", measures, cells, tables=2) == pytest.approx(0.2)
    assert opt.sensitivity("count") == 1
    assert opt.sensitivity("balance") == 20000 * 256  # max(|lo|, |hi|) in 2^-8 units
