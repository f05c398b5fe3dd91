"""The local checks of a party's offered columns, as summaries that merge batch by batch.

A column's :class:`ColumnSummary` (values present, text or numeric, infinities, min, max, largest
magnitude, the distinct values of a text column) is computed for one batch by :func:`summarize`
and merged with :func:`merge`, so the checks of ``vfl.data.check_columns`` run the same on a table
in memory (one batch) and on a file streamed in record batches (``vfl.streaming``), and give the
same one-line problems (:func:`column_problem`). :func:`witness` turns a summary back into a few
values with the same problems, for checks written against a frame (a streamed job's pre-contact checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MAX_MAGNITUDE = 1e100  # larger values overflow the variance (x**2) in double precision


def as_float(col: pd.Series) -> np.ndarray | None:
    """The column as float64 (NaN for missing, infinities kept), or None when it holds text that is not a number."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=float, na_value=np.nan)
    converted = pd.to_numeric(col, errors="coerce")
    if (converted.isna() & col.notna()).any():
        return None
    return converted.to_numpy(dtype=float, na_value=np.nan)


@dataclass(frozen=True)
class ColumnSummary:
    """What the local checks need of one column (or of one batch of it)."""

    values: int = 0  # values present (not missing)
    text: bool = False  # holds text that is not a number
    infinite: int = 0
    low: float = math.inf
    high: float = -math.inf
    largest: float = 0.0  # the largest magnitude
    categories: frozenset = field(default_factory=frozenset)  # distinct values of a text column


def summarize(col: pd.Series) -> ColumnSummary:
    """The summary of one column or batch (a pure function)."""
    present = int(col.notna().sum())
    values = as_float(col) if present else np.empty(0)
    if values is None:
        return ColumnSummary(present, True, categories=frozenset(col.dropna().unique()))
    infinite = int(np.isinf(values).sum())
    seen = values[~np.isnan(values)]
    if not seen.size:
        return ColumnSummary(present, infinite=infinite)
    return ColumnSummary(
        present, False, infinite, float(seen.min()), float(seen.max()), float(np.abs(seen).max())
    )


def merge(a: ColumnSummary, b: ColumnSummary) -> ColumnSummary:
    """The summary of two disjoint batches of one column."""
    return ColumnSummary(
        a.values + b.values,
        a.text or b.text,
        a.infinite + b.infinite,
        min(a.low, b.low),
        max(a.high, b.high),
        max(a.largest, b.largest),
        a.categories | b.categories,
    )


def column_problem(name: str, s: ColumnSummary, max_categories: int) -> str | None:
    """The one problem of a column the local checks refuse, or None."""
    if not s.values:
        return f"column '{name}' has no values"
    if s.text:
        if len(s.categories) > max_categories:
            return f"text column '{name}' has {len(s.categories)} distinct values (at most {max_categories})"
        return None
    if s.infinite:
        return f"column '{name}' has {s.infinite} infinite values"
    if s.low == s.high:
        return f"column '{name}' is constant"
    if s.largest > MAX_MAGNITUDE:
        return (
            f"column '{name}' has values up to {s.largest:.3g}, too large to standardize "
            f"(at most {MAX_MAGNITUDE:.0e}); rescale it"
        )
    return None


def witness(s: ColumnSummary, rows: int, length: int = 3) -> pd.Series:
    """``length`` values that show what ``s`` (a column of ``rows`` rows) shows a check: text, missing
    values, infinities, its minimum and maximum. A pure function; the checks of a frame give the same
    answer on these values as on the whole column."""
    if s.text:
        categories = sorted(s.categories, key=str)
        values: list = [categories[i % len(categories)] for i in range(length)]
        if s.values < rows:
            values[-1] = None
        return pd.Series(values, dtype=object)
    seen = [s.low, s.high] if s.values else []
    shown = ([math.nan] if s.values < rows else []) + seen
    padding = seen[0] if seen else math.nan
    return pd.Series((shown + [padding] * length)[:length], dtype=float)
