"""Feature screening: binning, minimum bin sizes, WOE and IV from per-bin event counts.

The federated protocol never joins labels and features in one place: the guest encrypts its 0/1 labels,
the host sums ``[[y]]`` over each of its bins (:func:`encrypted_bin_sums`), and the guest decrypts the
per-bin event counts (:func:`decrypt_bin_counts`). Everything else here works on per-bin counts, so the
same functions serve the joined data (tests, the guest's own columns) and the federation, with equal
results.

**Bins.** A :class:`Binning` is a sorted tuple of cut points: value ``v`` falls in bin ``b`` = the
number of cuts ``< v`` (right-closed intervals ``(c_{b-1}, c_b]``, the first open to ``-inf``, the
last to ``+inf``). Missing values (NaN) always have their own bin, index ``n_value_bins`` (last); it
may be empty. :func:`quantile_binning` places cuts at the ``i / bins`` quantiles of the non-missing
values, strictly between their minimum and maximum (so it equals ``pandas.qcut(v, bins,
duplicates="drop")``).

**Minimum bin size.** :func:`merge_small_bins` makes every bin describe at least ``k`` customers
(or none): the smallest value bin below ``k`` is merged with its smaller neighbour until none is left
(or one value bin remains); a non-empty missing bin below ``k`` is merged into the value bin with the
fewest rows (``Binning.missing_into``). The host runs it on its own counts before anything is sent.

**Monotone bins.** :func:`monotone_groups` merges adjacent value bins (pool-adjacent-violators) until
WOE is strictly monotone in the direction of the weighted correlation between bin order and event
rate; it needs only per-bin counts, so the guest can run it after decryption and send the host the
merge plan. :func:`optimal_monotone_binning` chains quantile bins, minimum size and monotone merging
on joined data.

**WOE and IV.** With ``E = sum e_b`` events and ``N = sum n_b`` non-events over all bins,
``WOE_b = ln((e_b / E) / (n_b / N))`` and ``IV = sum_b (e_b / E - n_b / N) WOE_b``. *Smoothing:* a
non-empty bin with no events or no non-events uses ``e_b + 0.5`` and ``n_b + 0.5`` (both counts of that
bin only; the totals stay unadjusted), FATE's adjustment factor. An empty bin has WOE 0 and adds 0 to
IV. Strength labels (:func:`strength`): useless < 0.02 <= weak < 0.1 <= medium < 0.3 <= strong < 0.5
<= suspicious (too good to be true: check for leakage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vfl.errors import DataError, IntegrityError

if TYPE_CHECKING:
    from vfl.crypto.keys import PrivateKey
    from vfl.crypto.randomness import RandomnessPool
    from vfl.crypto.vector import EncryptedVector

SMOOTHING = 0.5
"""Added to both counts of a non-empty bin that has no events or no non-events."""

STRENGTHS = ((0.02, "useless"), (0.1, "weak"), (0.3, "medium"), (0.5, "strong"))
"""Upper bounds (exclusive) of the IV strength labels; anything above is ``suspicious``."""


@dataclass(frozen=True)
class Binning:
    """Cut points of one column plus where missing values go (see the module docstring)."""

    cuts: tuple[float, ...]
    missing_into: int | None = None  # None: missing values have their own (last) bin

    def __post_init__(self) -> None:
        cuts = tuple(float(c) for c in self.cuts)
        if any(not math.isfinite(c) for c in cuts) or any(
            a >= b for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        ):
            raise DataError("bin cut points must be finite and strictly increasing")
        object.__setattr__(self, "cuts", cuts)
        if self.missing_into is not None and not 0 <= self.missing_into < len(cuts) + 1:
            raise DataError(f"missing_into={self.missing_into} is not a value bin (0..{len(cuts)})")

    @property
    def n_value_bins(self) -> int:
        return len(self.cuts) + 1

    @property
    def n_bins(self) -> int:
        """Value bins plus the missing bin (which stays, empty, once merged into a value bin)."""
        return self.n_value_bins + 1

    @property
    def missing_bin(self) -> int:
        return self.n_value_bins

    def assign(self, values: np.ndarray | Sequence[float]) -> np.ndarray:
        """Bin index of every value (int64); NaN goes to the missing bin or ``missing_into``."""
        v = np.asarray(values, dtype=np.float64)
        idx = np.searchsorted(np.asarray(self.cuts), v, side="left").astype(np.int64)
        missing = np.isnan(v)
        idx[missing] = self.missing_bin if self.missing_into is None else self.missing_into
        return idx

    def labels(self) -> list[str]:
        edges = ["-inf", *(f"{c:g}" for c in self.cuts), "+inf"]
        out = [f"({a}, {b}]" for a, b in zip(edges[:-1], edges[1:], strict=True)]
        if self.missing_into is not None:
            out[self.missing_into] += " or missing"
        return [*out, "missing"]

    def merged(self, groups: Sequence[Sequence[int]], missing_into: int | None = None) -> Binning:
        """The binning whose value bin ``g`` is the union of old value bins ``groups[g]`` (consecutive)."""
        _check_groups(groups, self.n_value_bins)
        cuts = tuple(self.cuts[grp[-1]] for grp in groups[:-1])
        return Binning(cuts, missing_into)

    def regrouped(self, groups: Sequence[Sequence[int]]) -> Binning:
        """:meth:`merged`, with missing values still in the (now merged) value bin they were folded into."""
        into = self.missing_into
        return self.merged(
            groups, None if into is None else next(g for g, grp in enumerate(groups) if into in grp)
        )


def _check_groups(groups: Sequence[Sequence[int]], n_value_bins: int) -> None:
    flat = [b for grp in groups for b in grp]
    if flat != list(range(n_value_bins)) or any(len(g) == 0 for g in groups):
        raise DataError(f"merge groups must cover value bins 0..{n_value_bins - 1} in order, consecutively")


def merge_counts(
    counts: np.ndarray | Sequence[int], groups: Sequence[Sequence[int]], missing_into: int | None = None
) -> np.ndarray:
    """Per-bin counts (value bins then the missing bin) after merging value bins by ``groups``;
    ``missing_into`` moves the missing bin's count into that merged value bin."""
    c = np.asarray(counts)
    _check_groups(groups, len(c) - 1)
    out = np.array([c[list(g)].sum() for g in groups] + [c[-1]], dtype=c.dtype)
    if missing_into is not None:
        out[missing_into] += out[-1]
        out[-1] = 0
    return out


def quantile_binning(values: np.ndarray | Sequence[float], bins: int = 10) -> Binning:
    """Cuts at the ``i / bins`` quantiles of the non-missing values, strictly inside (min, max)."""
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise DataError(f"bins must be a positive integer, got {bins!r}")
    v = np.asarray(values, dtype=np.float64)
    if np.any(np.isinf(v)):
        raise DataError("the column has infinite values; clip them before binning")
    v = v[~np.isnan(v)]
    if v.size == 0:
        return Binning(())
    q = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    lo, hi = v.min(), v.max()
    return Binning(tuple(float(c) for c in q if lo < c < hi))


def bin_counts(
    bin_index: np.ndarray, labels: np.ndarray | None, n_bins: int
) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
    """Rows per bin (``labels`` None), else ``(events, non_events)`` per bin, as int64 arrays."""
    idx = np.asarray(bin_index, dtype=np.int64)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    if labels is None:
        return counts
    y = _binary_labels(labels, len(idx))
    events = np.bincount(idx, weights=y, minlength=n_bins).round().astype(np.int64)
    return events, counts - events


def _binary_labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != (n,):
        raise DataError(f"labels have shape {y.shape}, expected ({n},)")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("WOE and IV need 0/1 labels (1 = event)")
    return y


def merge_small_bins(binning: Binning, counts: np.ndarray | Sequence[int], k: int) -> Binning:
    """Merge bins until none describes fewer than ``k`` customers (empty bins are merged too, except an
    empty missing bin). ``counts`` are rows per bin of ``binning`` (value bins, then missing)."""
    if k < 1:
        raise DataError(f"the minimum bin size k must be >= 1, got {k}")
    c = [int(x) for x in counts]
    if len(c) != binning.n_bins:
        raise DataError(f"{len(c)} counts for a binning of {binning.n_bins} bins")
    groups = [[b] for b in range(binning.n_value_bins)]
    sizes = c[:-1]
    while len(groups) > 1 and min(sizes) < k:
        i = int(np.argmin(sizes))  # smallest bin, first on ties
        if i == 0:
            j = 1
        elif i == len(groups) - 1:
            j = i - 1
        else:
            j = i - 1 if sizes[i - 1] <= sizes[i + 1] else i + 1
        a, b = min(i, j), max(i, j)
        groups[a : b + 1] = [groups[a] + groups[b]]
        sizes[a : b + 1] = [sizes[a] + sizes[b]]
    base = binning.merged(groups)
    missing_into = binning.missing_into
    if missing_into is not None:  # translate the old value bin to its group
        missing_into = next(g for g, grp in enumerate(groups) if missing_into in grp)
    elif 0 < c[-1] < k:
        missing_into = int(np.argmin(sizes))
    return Binning(base.cuts, missing_into)


def woe_iv(
    events: np.ndarray | Sequence[int], non_events: np.ndarray | Sequence[int], smoothing: float = SMOOTHING
) -> tuple[np.ndarray, np.ndarray]:
    """``(WOE per bin, IV contribution per bin)`` from per-bin counts; the column's IV is the sum."""
    e = np.asarray(events, dtype=np.float64)
    ne = np.asarray(non_events, dtype=np.float64)
    if e.shape != ne.shape or e.ndim != 1:
        raise DataError(f"events and non_events must be 1-D of one length, got {e.shape} and {ne.shape}")
    if np.any(e < 0) or np.any(ne < 0):
        raise DataError("per-bin event and non-event counts must be non-negative")
    total_e, total_ne = e.sum(), ne.sum()
    if total_e == 0 or total_ne == 0:
        raise DataError("WOE needs both events and non-events; the labels have one class only")
    occupied = (e + ne) > 0
    adjust = occupied & ((e == 0) | (ne == 0))
    e_adj = np.where(adjust, e + smoothing, e)
    ne_adj = np.where(adjust, ne + smoothing, ne)
    dist_e = e_adj / total_e
    dist_ne = ne_adj / total_ne
    with np.errstate(divide="ignore", invalid="ignore"):
        woe = np.where(occupied, np.log(dist_e / dist_ne), 0.0)
    iv = np.where(occupied, (dist_e - dist_ne) * woe, 0.0)
    return woe, iv


def information_value(events: np.ndarray | Sequence[int], non_events: np.ndarray | Sequence[int]) -> float:
    return float(np.sum(woe_iv(events, non_events)[1]))


def strength(iv: float) -> str:
    """The conventional label of an IV value (see :data:`STRENGTHS`)."""
    for top, name in STRENGTHS:
        if iv < top:
            return name
    return "suspicious"


def woe_table(
    events: np.ndarray | Sequence[int], non_events: np.ndarray | Sequence[int], binning: Binning | None = None
) -> pd.DataFrame:
    """One row per bin: label, rows, events, non-events, event rate, WOE and IV contribution."""
    e, ne = np.asarray(events, dtype=np.int64), np.asarray(non_events, dtype=np.int64)
    woe, iv = woe_iv(e, ne)
    rows = e + ne
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(rows > 0, e / np.maximum(rows, 1), np.nan)
    labels = binning.labels() if binning is not None else [str(b) for b in range(len(e))]
    return pd.DataFrame(
        {"bin": labels, "rows": rows, "events": e, "non_events": ne, "event_rate": rate, "woe": woe, "iv": iv}
    )


def iv_table(columns: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """``column``, ``iv``, ``strength`` for every column's ``(events, non_events)``, strongest first."""
    rows = [(name, information_value(e, ne)) for name, (e, ne) in columns.items()]
    table = pd.DataFrame(rows, columns=["column", "iv"])
    table["strength"] = [strength(v) for v in table["iv"]]
    return table.sort_values(["iv", "column"], ascending=[False, True], kind="stable").reset_index(drop=True)


def monotone_groups(
    events: np.ndarray | Sequence[int], non_events: np.ndarray | Sequence[int], smoothing: float = SMOOTHING
) -> list[list[int]]:
    """Groups of consecutive value bins whose WOE is strictly monotone (the missing bin, last in the
    counts, is left alone). Direction: the sign of the row-weighted correlation of bin order and event
    rate (increasing if 0). Adjacent violators are merged, first violation first, until none is left."""
    e = np.asarray(events, dtype=np.float64)[:-1]
    ne = np.asarray(non_events, dtype=np.float64)[:-1]
    total_e = float(np.sum(events))
    total_ne = float(np.sum(non_events))
    if total_e == 0 or total_ne == 0:
        raise DataError("WOE needs both events and non-events; the labels have one class only")
    rows = e + ne
    occupied = rows > 0
    if occupied.sum() >= 2:
        pos = np.arange(len(e), dtype=np.float64)[occupied]
        w, rate = rows[occupied], (e / np.maximum(rows, 1))[occupied]
        cov = np.sum(w * (pos - np.average(pos, weights=w)) * (rate - np.average(rate, weights=w)))
        sign = -1.0 if cov < 0 else 1.0
    else:
        sign = 1.0
    groups = [[b] for b in range(len(e))]
    ge, gne = list(e), list(ne)

    def woe(i: int) -> float:
        a, b = ge[i], gne[i]
        if a + b == 0:
            return math.nan
        if a == 0 or b == 0:
            a, b = a + smoothing, b + smoothing
        return math.log((a / total_e) / (b / total_ne))

    while True:
        values = [woe(i) for i in range(len(groups))]
        bad = None
        for i in range(len(groups) - 1):
            x, y = values[i], values[i + 1]
            if math.isnan(x) or math.isnan(y) or sign * (y - x) <= 0:
                bad = i
                break
        if bad is None:
            return groups
        groups[bad : bad + 2] = [groups[bad] + groups[bad + 1]]
        ge[bad : bad + 2] = [ge[bad] + ge[bad + 1]]
        gne[bad : bad + 2] = [gne[bad] + gne[bad + 1]]


def optimal_monotone_binning(
    values: np.ndarray, labels: np.ndarray, bins: int = 10, k: int = 1
) -> tuple[Binning, np.ndarray, np.ndarray]:
    """Quantile bins, then bins below ``k`` merged, then merged until WOE is monotone (joined data).

    Returns the binning and its per-bin ``(events, non_events)``.
    """
    binning = quantile_binning(values, bins)
    events, non_events = bin_counts(binning.assign(values), labels, binning.n_bins)
    binning = merge_small_bins(binning, events + non_events, k)
    events, non_events = bin_counts(binning.assign(values), labels, binning.n_bins)
    groups = monotone_groups(events, non_events)
    events = merge_counts(events, groups)
    non_events = merge_counts(non_events, groups)
    return binning.regrouped(groups), events, non_events


def bin_column(
    values: np.ndarray,
    bins: int = 10,
    method: str = "quantile",
    labels: np.ndarray | None = None,
    k: int = 1,
) -> Binning:
    """One entry point: ``method="quantile"`` (labels not needed) or ``"monotone"`` (needs 0/1 labels),
    both with bins below ``k`` rows merged."""
    if method == "monotone":
        if labels is None:
            raise DataError("monotone binning needs the labels (or per-bin counts: use monotone_groups)")
        return optimal_monotone_binning(values, labels, bins, k)[0]
    if method != "quantile":
        raise DataError(f"unknown binning method {method!r}; use 'quantile' or 'monotone'")
    binning = quantile_binning(values, bins)
    return merge_small_bins(binning, bin_counts(binning.assign(values), None, binning.n_bins), k)


# -- the federated step ------------------------------------------------------------------------------
def encrypted_bin_sums(
    encrypted_labels: EncryptedVector,
    bin_index: np.ndarray,
    n_bins: int,
    k: int = 1,
    randomness: RandomnessPool | None = None,
) -> tuple[EncryptedVector, np.ndarray]:
    """Host side: ``[[sum of y over bin b]]`` for every bin (re-randomized) and the bin sizes it knows.

    ``encrypted_labels[i]`` is the guest's ``[[y_i]]`` for the host's aligned row ``i``. Refuses (before
    any arithmetic) a binning with a non-empty bin of fewer than ``k`` rows: run
    :func:`merge_small_bins` first. Cost: ``n - n_bins`` modmuls plus one re-randomization per bin.
    """
    from vfl.crypto.vector import EncryptedVector

    idx = np.asarray(bin_index, dtype=np.int64)
    if idx.shape != (len(encrypted_labels),):
        raise DataError(f"{len(idx)} bin indices for {len(encrypted_labels)} encrypted labels")
    if idx.size and (idx.min() < 0 or idx.max() >= n_bins):
        raise DataError(f"bin indices must be in 0..{n_bins - 1}")
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    small = [b for b in range(n_bins) if 0 < counts[b] < k]
    if small:
        raise DataError(
            f"bins {small} describe fewer than k={k} customers; merge them (merge_small_bins) before "
            "computing per-bin sums"
        )
    parts = [encrypted_labels[np.flatnonzero(idx == b)].sum() for b in range(n_bins)]
    sums = EncryptedVector.concatenate(parts).rerandomize(randomness=randomness)
    return sums, counts


def decrypt_bin_counts(
    private_key: PrivateKey, sums: EncryptedVector, counts: np.ndarray | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Guest side: ``(events, non_events)`` per bin from the host's encrypted sums and bin sizes."""
    from vfl.crypto.vector import decrypt

    values = decrypt(private_key, sums)
    c = np.asarray(counts, dtype=np.int64)
    if values.shape != c.shape:
        raise IntegrityError(f"{len(values)} encrypted sums but {len(c)} bin sizes")
    events = np.rint(values).astype(np.int64)
    if np.any(np.abs(values - events) > 1e-6) or np.any(events < 0) or np.any(events > c):
        raise IntegrityError("per-bin event counts are not integers between 0 and the bin size")
    return events, c - events
