"""Id columns for private set intersection: canonical strings, normalization, and validation.

Every party turns its id column into canonical strings the same way before anything is hashed,
because two parties only find a shared customer if they hash byte-identical strings:

- integers (Python, NumPy, pandas nullable, or floats with an integral value, which is what
  pandas makes of an integer column with gaps) become their decimal string, so ``7`` at one party
  matches ``"7"`` at another; a float with a fractional part, a boolean or bytes is an error;
- strings are normalized by the job's ``Normalization`` (default: strip surrounding whitespace
  only); the settings are compared between parties before the PSI starts;
- a missing id (None, NaN, pandas NA, or a string that is empty after normalization) is an error
  naming how many rows are affected; duplicates (after normalization) are an error naming how many
  and one example, unless ``dedupe="first"`` keeps the first occurrence.

The normalized strings are kept as Arrow string chunks, not millions of Python objects.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from vfl.errors import ConfigError, DataError

#: How many ids are canonicalized per batch (bounds the Python objects alive at once).
PREPARE_BATCH = 65536

DEDUPE_MODES = ("error", "first")


@dataclass(frozen=True)
class Normalization:
    """How id strings are normalized before hashing; must be identical at every party.

    Steps, in this order: Unicode NFKC (``nfkc``), case folding (``casefold``, followed by NFKC
    again when both are on, as Unicode recommends for caseless matching), then stripping leading
    and trailing whitespace with Python's ``str.strip()`` (``strip``). Default: strip only.
    """

    strip: bool = True
    casefold: bool = False
    nfkc: bool = False

    def __post_init__(self) -> None:
        for name in ("strip", "casefold", "nfkc"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"PSI normalization setting '{name}' must be true or false, got {getattr(self, name)!r}"
                )

    def apply(self, text: str) -> str:
        """Normalize one id string."""
        if self.nfkc:
            text = unicodedata.normalize("NFKC", text)
        if self.casefold:
            text = text.casefold()
            if self.nfkc:
                text = unicodedata.normalize("NFKC", text)
        if self.strip:
            text = text.strip()
        return text

    def settings(self) -> dict[str, str]:
        """The settings as ``{"normalization.<name>": "true"|"false"}``, for agreement between parties."""
        return {
            f"normalization.{name}": str(getattr(self, name)).lower()
            for name in ("strip", "casefold", "nfkc")
        }


@dataclass(frozen=True, eq=False)
class PreparedIds:
    """A party's validated ids: which input rows take part, and their normalized strings.

    ``rows[i]`` is the position (0-based, in the input order) of the row whose normalized id is
    ``normalized[i]``; rows dropped by ``dedupe="first"`` are not in ``rows``.
    """

    rows: np.ndarray  # int64
    normalized: pa.ChunkedArray  # string, same length as rows
    n_input: int
    duplicates_dropped: int

    def __len__(self) -> int:
        return len(self.rows)


def _canonical(value: Any, position: int, column: str, normalization: Normalization) -> str | None:
    """One id as its canonical normalized string, or None when it is missing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return normalization.apply(value)
    if isinstance(value, (bool, np.bool_)):
        raise DataError(
            f"id column '{column}' holds the boolean {value!r} at row {position}; ids must be strings or integers"
        )
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return None
        if number.is_integer():
            return str(int(number))
        raise DataError(
            f"id column '{column}' holds the number {value!r} at row {position}; ids must be strings or "
            "integers (a fractional number cannot be matched reliably)"
        )
    raise DataError(
        f"id column '{column}' holds a {type(value).__name__} ({value!r:.40}) at row {position}; "
        "ids must be strings or integers"
    )


def as_id_series(values: Any) -> pd.Series:
    """Any id column (Series, Arrow array, NumPy array, list) as a pandas Series indexed 0..n-1."""
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return pd.Series(values.to_pandas()) if len(values) else pd.Series([], dtype=object)
    if isinstance(values, (np.ndarray, pd.Index, Sequence)):
        return pd.Series(values, dtype=None if len(values) else object)
    raise DataError(f"ids must be a column (pandas Series, array or list), got {type(values).__name__}")


def _canonical_batch(
    batch: pd.Series, offset: int, column: str, normalization: Normalization
) -> list[str | None]:
    dtype = batch.dtype
    if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        # Vectorized fast path for integer columns (numpy or nullable pandas integers).
        missing = batch.isna().to_numpy()
        strings = batch.astype("object").to_numpy()
        return [None if m else str(int(v)) for v, m in zip(strings, missing, strict=True)]
    return [_canonical(v, offset + i, column, normalization) for i, v in enumerate(batch.tolist())]


def prepare_ids(
    values: Any,
    *,
    normalization: Normalization | None = None,
    dedupe: Literal["error", "first"] = "error",
    column: str = "id",
) -> PreparedIds:
    """Canonicalize, normalize and validate a party's id column (see the module docstring).

    Raises ``DataError`` for missing ids (naming the row count and the first such row), for
    duplicates when ``dedupe="error"`` (naming how many rows repeat an earlier id and one example),
    and for values that are neither strings nor integers.
    """
    normalization = normalization or Normalization()
    if dedupe not in DEDUPE_MODES:
        raise ConfigError(f"PSI option dedupe must be one of {', '.join(DEDUPE_MODES)}, got {dedupe!r}")
    series = as_id_series(values)
    n = len(series)
    chunks: list[pa.Array] = []
    missing_count = 0
    first_missing = -1
    for start in range(0, n, PREPARE_BATCH):
        batch = _canonical_batch(series.iloc[start : start + PREPARE_BATCH], start, column, normalization)
        array = pa.array(batch, type=pa.string())
        empty = pc.fill_null(pc.equal(pc.utf8_length(array), 0), True)
        n_missing = pc.sum(empty).as_py() or 0
        if n_missing:
            if first_missing < 0:
                first_missing = start + int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
            missing_count += n_missing
        chunks.append(array)
    if missing_count:
        raise DataError(
            f"id column '{column}': {missing_count} of {n} rows have no id (null, NaN or empty"
            f"{' after normalization' if normalization.strip else ''}), e.g. row {first_missing}; "
            "drop or fill those rows before alignment"
        )
    normalized = pa.chunked_array(chunks, type=pa.string())
    if n == 0:
        return PreparedIds(np.empty(0, dtype=np.int64), normalized, 0, 0)
    distinct = pc.count_distinct(normalized).as_py()  # one Arrow hash pass; no per-row mask when all differ
    pa.default_memory_pool().release_unused()  # the hash table's memory: back to the system, not kept
    if distinct == n:
        return PreparedIds(np.arange(n, dtype=np.int64), normalized, n, 0)
    duplicated = pd.Series(pd.arrays.ArrowExtensionArray(normalized)).duplicated(keep="first").to_numpy()
    n_dup = int(duplicated.sum())
    if n_dup and dedupe == "error":
        example_row = int(np.flatnonzero(duplicated)[0])
        example = normalized[example_row].as_py()
        first_row = int(pc.index(normalized, example).as_py())
        raise DataError(
            f"id column '{column}' has {n_dup} duplicate id{'s' if n_dup > 1 else ''} (rows repeating an earlier id), "
            f"e.g. {series.iloc[example_row]!r} at rows {first_row} and {example_row}; remove them or pass "
            "dedupe='first' to keep the first occurrence"
        )
    rows = np.arange(n, dtype=np.int64)
    if n_dup:
        keep = ~duplicated
        rows = rows[keep]
        normalized = pa.chunked_array([normalized.combine_chunks().filter(pa.array(keep))], type=pa.string())
    return PreparedIds(rows=rows, normalized=normalized, n_input=n, duplicates_dropped=n_dup)
