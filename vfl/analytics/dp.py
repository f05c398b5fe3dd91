"""Differential privacy for the ``audience`` job: noise, the epsilon split, suppression, options.

**Noise.** Every released number gets two-sided geometric (discrete Laplace) noise ``Z`` with
``P(Z = z) = (1 - p) / (1 + p) * p^|z|`` and ``p = exp(-epsilon / sensitivity)``; its mean is 0 and its
variance ``2 p / (1 - p)^2``. Adding ``Z`` to an integer query of the given sensitivity (under adding or
removing one customer) is ``epsilon``-differentially private. Samples are *exact*: the sampler of
Canonne, Kamath and Steinke (2020, "The discrete Gaussian for differential privacy", Algorithm 2) uses
only integer arithmetic on uniform integers from :mod:`secrets` (the operating system's CSPRNG,
``os.urandom``), so there is no floating-point leak (Mironov 2012) and no seedable generator an
observer could reconstruct. ``epsilon / sensitivity`` is first rounded *down* to a dyadic rational
with 30 significant bits (relative change < 2^-29, and only ever towards more noise).

**Sensitivities** (integer units, as the numbers travel in the Paillier slots): a count has 1; a sum of
a metric clipped to ``[lo, hi]`` and quantized with ``f`` fraction bits has ``max(|lo|, |hi|) * 2^f``
(adding or removing one customer changes it by at most that much).

**Accounting** (``AudienceOptions.split``). A job is granted ``epsilon`` per partner. The released
numbers of one cross-tab are ``cells x measures`` (measures: the count and each metric sum).

* ``"measures"`` (default): ``epsilon / (tables * measures)`` per number. Each customer falls in exactly
  one (guest cell, host cell), so the numbers of different cells are about disjoint sets of people
  (*parallel* composition: a cell-wise release costs the epsilon of one cell); the measures of one cell
  and the tables of one job compose *sequentially* (epsilons add).
* ``"numbers"``: ``epsilon / (tables * cells * measures)`` per number: plain sequential composition
  over every released number, which does not rely on the cells being disjoint (most conservative).
* a mapping ``{measure: weight}`` (``"count"`` and metric column names): measure ``m`` gets
  ``epsilon * w_m / (tables * sum(w))``, parallel over cells as for ``"measures"``.

Either way the epsilons of all released numbers about one customer add up to at most ``epsilon``.
Means are ``noised sum / noised count`` (post-processing: free) and only for released cells.

**Two noise shares** (:func:`noise_share`). Each party adds its own *full-strength* share ``Z_a``,
``Z_b`` (each alone ``epsilon``-DP for the number) before the other party can see the value, so the
release is ``v + Z_a + Z_b``. Party ``a`` knows ``Z_a`` and so sees ``v + Z_b``: exactly the
``epsilon``-DP mechanism, with noise it does not know; likewise for ``b``. Anyone who knows neither
share sees ``(v + Z_a) + Z_b``: an ``epsilon``-DP release followed by adding independent noise, which is
post-processing and cannot weaken the guarantee. So every observer's view is at least as private as
one discrete Laplace mechanism; the price is twice the variance in the final number.

**Suppression** (:func:`suppress`): a cell whose *noised* count is below ``k`` is withheld, its count
and all its sums and means alike (thresholding a DP value is post-processing).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from vfl.errors import ConfigError, CryptoError

DEFAULT_EPSILON = 1.0
DEFAULT_K = 20
DEFAULT_MAX_CATEGORIES = 16
DEFAULT_FRACTION_BITS = 8
SPLIT_RULES = ("measures", "numbers")
_PRECISION_BITS = 30
TAIL_BITS = 64  # noise beyond noise_limit() has probability < 2^-64


# ---------------------------------------------------------------------------------------------
# exact sampling from secrets
# ---------------------------------------------------------------------------------------------


def _bernoulli(num: int, den: int) -> bool:
    """True with probability ``num / den`` (0 <= num <= den)."""
    return secrets.randbelow(den) < num


def _bernoulli_exp(num: int, den: int) -> bool:
    """True with probability ``exp(-num / den)`` for a rational ``num / den >= 0`` (CKS Algorithm 1)."""
    while num > den:  # exp(-g) = exp(-1)^floor(g) * exp(-(g - floor g))
        if not _bernoulli_exp(1, 1):
            return False
        num -= den
    k = 1
    while _bernoulli(num, den * k):
        k += 1
    return k % 2 == 1


def _ratio(epsilon: float, sensitivity: int) -> tuple[int, int]:
    """``(s, t)`` with ``s / t <= epsilon / sensitivity``, rounded down to 30 significant bits."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError(f"epsilon must be a positive finite number, got {epsilon}")
    if sensitivity < 1 or int(sensitivity) != sensitivity:
        raise ConfigError(f"sensitivity must be a positive integer, got {sensitivity}")
    exact = Fraction(epsilon) / int(sensitivity)
    shift = _PRECISION_BITS - math.floor(math.log2(exact))  # keep 30 significant bits, rounding down
    approx = Fraction(math.floor(exact * 2**shift), 2**shift) if shift > 0 else Fraction(math.floor(exact))
    return approx.numerator, approx.denominator


def discrete_laplace(epsilon: float, sensitivity: int = 1, size: int | None = None) -> int | np.ndarray:
    """Exact two-sided geometric noise with ``p = exp(-epsilon / sensitivity)`` from :mod:`secrets`.

    One int, or an int64 array of ``size`` draws (object dtype if a draw exceeds int64).
    """
    s, t = _ratio(epsilon, sensitivity)
    if size is None:
        return _one(s, t)
    draws = [_one(s, t) for _ in range(int(size))]
    try:
        return np.array(draws, dtype=np.int64)
    except OverflowError:  # pragma: no cover - astronomically large scale
        out = np.empty(len(draws), dtype=object)
        out[:] = draws
        return out


def _one(s: int, t: int) -> int:
    """One draw of discrete Laplace with scale ``t / s`` (CKS Algorithm 2)."""
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp(u, t):
            continue
        v = 0
        while _bernoulli_exp(1, 1):
            v += 1
        y = (u + t * v) // s
        negative = secrets.randbits(1)
        if negative and y == 0:
            continue
        return -y if negative else y


def noise_parameter(epsilon: float, sensitivity: int = 1) -> float:
    """``p = exp(-epsilon / sensitivity)``."""
    return math.exp(-epsilon / sensitivity)


def noise_variance(epsilon: float, sensitivity: int = 1) -> float:
    """Variance ``2 p / (1 - p)^2`` of one share."""
    p = noise_parameter(epsilon, sensitivity)
    return 2 * p / (1 - p) ** 2


def noise_limit(epsilon: float, sensitivity: int = 1) -> int:
    """``T`` with ``P(|Z| > T) < 2^-64`` for one share (``2 p^(T+1) / (1 + p) < 2^-64``).

    Slot widths are sized for ``|value| + 2 T`` (two shares); a draw beyond ``T`` is refused.
    """
    s, t = _ratio(epsilon, sensitivity)
    return math.ceil((TAIL_BITS + 1) * math.log(2) * t / s)


def noise_share(
    epsilon: float, sensitivities: Sequence[int] | int, *, disable_noise_for_tests: bool = False
) -> list[int]:
    """One party's full-strength share: an independent discrete Laplace draw per released number.

    ``sensitivities`` gives each number's sensitivity (an int: one number). Each party calls this for
    every number it releases and adds the share before the other party can see the value (see the
    module docstring for why the sum of two shares is at least as private for every observer).
    ``disable_noise_for_tests`` returns zeros; it exists for exactness tests and no job option maps to it.
    """
    sens = [sensitivities] if isinstance(sensitivities, int) else list(sensitivities)
    if disable_noise_for_tests:
        return [0] * len(sens)
    out = []
    for d in sens:
        z = int(discrete_laplace(epsilon, int(d)))
        if abs(z) > noise_limit(epsilon, int(d)):  # probability < 2^-64
            raise CryptoError(
                "a noise draw exceeded its slot headroom (probability < 2^-64); run the job again"
            )
        out.append(z)
    return out


# ---------------------------------------------------------------------------------------------
# suppression and release
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Released:
    """The released table: ``counts`` and each metric's ``sums`` / ``means`` (float, NaN where withheld).

    ``released`` is True for the cells that are shown; ``suppressed = ~released``.
    """

    counts: np.ndarray
    sums: dict[str, np.ndarray]
    means: dict[str, np.ndarray]
    released: np.ndarray

    @property
    def suppressed(self) -> np.ndarray:
        return ~self.released


def suppress(counts: Any, sums: Mapping[str, Any] | None, k: int) -> Released:
    """Withhold every cell whose *noised* count is below ``k``, its count and sums alike.

    ``counts`` and every ``sums[m]`` are noised arrays of one shape. Withheld entries become NaN (use
    the ``released`` mask, or ``None`` via :func:`as_records`); means are ``sum / count`` for the
    released cells only.
    """
    if k < 2:
        raise ConfigError(f"k must be at least 2, got {k}")
    c = np.asarray(counts, dtype=float)
    keep = c >= k
    out_counts = np.where(keep, c, np.nan)
    out_sums: dict[str, np.ndarray] = {}
    out_means: dict[str, np.ndarray] = {}
    for name, s in (sums or {}).items():
        s = np.asarray(s, dtype=float)
        if s.shape != c.shape:
            raise ConfigError(f"sums of {name!r} have shape {s.shape}, counts {c.shape}")
        out_sums[name] = np.where(keep, s, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            out_means[name] = np.where(keep, s / np.where(keep, c, 1.0), np.nan)
    return Released(out_counts, out_sums, out_means, keep)


def as_records(released: Released, row_labels: Sequence[Any], column_labels: Sequence[Any]) -> list[dict]:
    """One dict per (row, column) cell; withheld values are ``None`` and ``suppressed`` is True."""
    out = []
    for i, r in enumerate(row_labels):
        for j, col in enumerate(column_labels):
            ok = bool(released.released[i, j])
            rec: dict[str, Any] = {"row": r, "column": col, "suppressed": not ok}
            rec["count"] = float(released.counts[i, j]) if ok else None
            for m in released.sums:
                rec[f"sum_{m}"] = float(released.sums[m][i, j]) if ok else None
                rec[f"mean_{m}"] = float(released.means[m][i, j]) if ok else None
            out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------


def _bad(option: str, message: str) -> ConfigError:
    return ConfigError(f"[audience] {option}: {message}")


@dataclass(frozen=True)
class AudienceOptions:
    """The ``[audience]`` options of a job (shared by all parties; compare digests before work).

    * ``epsilon`` (> 0, default 1.0): the privacy budget this job spends per partner.
    * ``k`` (>= 2, default 20): cells whose noised count is below ``k`` are withheld.
    * ``segments``: ``{party: [column, ...]}`` the segment columns of each party.
    * ``metrics``: ``{party: [column, ...]}`` numeric columns summed per cell; names unique across parties.
    * ``bounds``: ``{column: [lo, hi]}`` for every metric: values are clipped to it and it sets the
      noise scale (sensitivity ``max(|lo|, |hi|)``).
    * ``max_categories`` (default 16): slots per segment column; a column with more values is refused.
    * ``split`` (default ``"measures"``): how ``epsilon`` is divided, see the module docstring.
    * ``fraction_bits`` (default 8): fixed-point bits of metric values (resolution ``2^-8``).

    No option turns the noise off.
    """

    epsilon: float = DEFAULT_EPSILON
    k: int = DEFAULT_K
    segments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    metrics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    max_categories: int = DEFAULT_MAX_CATEGORIES
    split: str | Mapping[str, float] = "measures"
    fraction_bits: int = DEFAULT_FRACTION_BITS

    def __post_init__(self) -> None:
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
            raise _bad("epsilon", f"must be a positive finite number, got {eps!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise _bad("k", f"must be an integer >= 2 (cells below k are withheld), got {self.k!r}")
        if (
            isinstance(self.max_categories, bool)
            or not isinstance(self.max_categories, int)
            or self.max_categories < 1
        ):
            raise _bad("max_categories", f"must be a positive integer, got {self.max_categories!r}")
        fb = self.fraction_bits
        if isinstance(fb, bool) or not isinstance(fb, int) or not 0 <= fb <= 32:
            raise _bad("fraction_bits", f"must be an integer in [0, 32], got {fb!r}")
        segs = {str(p): tuple(map(str, cols)) for p, cols in dict(self.segments).items()}
        mets = {str(p): tuple(map(str, cols)) for p, cols in dict(self.metrics).items()}
        for name, table in (("segments", segs), ("metrics", mets)):
            for party, cols in table.items():
                if len(set(cols)) != len(cols):
                    raise _bad(name, f"party {party!r} lists a column twice: {list(cols)}")
        owners: dict[str, str] = {}
        for party, cols in mets.items():
            for col in cols:
                if col in owners:
                    raise _bad(
                        "metrics", f"column {col!r} is listed for {owners[col]!r} and {party!r}; rename one"
                    )
                owners[col] = party
        bounds: dict[str, tuple[float, float]] = {}
        for col, b in dict(self.bounds).items():
            try:
                lo, hi = (float(v) for v in b)
            except (TypeError, ValueError):
                raise _bad("bounds", f"{col!r} must be [lo, hi], got {b!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise _bad("bounds", f"{col!r} must be finite with lo < hi, got [{lo}, {hi}]")
            bounds[str(col)] = (lo, hi)
        for col, party in owners.items():
            if col not in bounds:
                raise _bad(
                    "bounds",
                    f"metric column {col!r} of {party!r} has no bounds; add {col} = [lo, hi] "
                    "(values are clipped to them and they set the noise)",
                )
        extra = sorted(set(bounds) - set(owners))
        if extra:
            raise _bad("bounds", f"bounds given for columns that are not metrics: {extra}")
        split = self.split
        if isinstance(split, str):
            if split not in SPLIT_RULES:
                raise _bad(
                    "split", f"must be one of {', '.join(SPLIT_RULES)} or {{measure: weight}}, got {split!r}"
                )
        else:
            weights = {str(m): float(w) for m, w in dict(split).items()}
            known = {"count", *owners}
            unknown = sorted(set(weights) - known)
            if unknown:
                raise _bad("split", f"weights for unknown measures {unknown}; measures are {sorted(known)}")
            missing = sorted(known - set(weights))
            if missing:
                raise _bad("split", f"no weight for measures {missing}")
            if any(not (w > 0 and math.isfinite(w)) for w in weights.values()):
                raise _bad("split", "every weight must be a positive finite number")
            split = weights
        object.__setattr__(self, "segments", segs)
        object.__setattr__(self, "metrics", mets)
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "split", split)
        object.__setattr__(self, "epsilon", float(eps))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AudienceOptions:
        """From a job.toml ``[audience]`` table; unknown keys (e.g. an attempt to turn noise off) are refused."""
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"[audience]: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the agreement digest and reports)."""
        return {
            "epsilon": self.epsilon,
            "k": self.k,
            "segments": {p: list(c) for p, c in sorted(self.segments.items())},
            "metrics": {p: list(c) for p, c in sorted(self.metrics.items())},
            "bounds": {c: list(b) for c, b in sorted(self.bounds.items())},
            "max_categories": self.max_categories,
            "split": self.split if isinstance(self.split, str) else dict(sorted(self.split.items())),
            "fraction_bits": self.fraction_bits,
        }

    # -- derived -----------------------------------------------------------------------------
    def owner(self, metric: str) -> str:
        for party, cols in self.metrics.items():
            if metric in cols:
                return party
        raise _bad("metrics", f"{metric!r} is not a metric column")

    def check_categories(self, party: str, column: str, categories: int) -> None:
        """Refuse a segment column with more distinct values than ``max_categories`` slots."""
        if categories > self.max_categories:
            raise _bad(
                "max_categories",
                f"segment column {column!r} of {party!r} has {categories} categories, more than the "
                f"{self.max_categories} slots allowed; bucket it or raise max_categories",
            )

    def sensitivity(self, measure: str) -> int:
        """Integer sensitivity of one released number of ``measure`` ("count" or a metric)."""
        if measure == "count":
            return 1
        lo, hi = self.bounds[measure]
        return max(1, math.ceil(max(abs(lo), abs(hi)) * 2**self.fraction_bits))

    def epsilon_per_number(self, measure: str, measures: Sequence[str], cells: int, tables: int = 1) -> float:
        """The epsilon of one released number of ``measure`` (see the accounting in the module docstring)."""
        measures = list(measures)
        if measure not in measures:
            raise _bad("metrics", f"{measure!r} is not among the released measures {measures}")
        if cells < 1 or tables < 1:
            raise ConfigError("a release has at least one cell and one table")
        if isinstance(self.split, str):
            per = self.epsilon / (tables * len(measures))
            return per / cells if self.split == "numbers" else per
        total = sum(self.split[m] for m in measures)
        return self.epsilon * self.split[measure] / (tables * total)
