"""Streaming input: a party's CSV or Parquet data read in record batches (pyarrow datasets).

For the steps that do not need the whole table at once -- the ids for PSI, and the per-column
statistics of preprocessing -- a party reads only the columns it needs, ``batch_rows`` rows at a
time, so its peak memory is bounded by one batch plus what the step keeps (the ids themselves for
PSI; a few numbers per column for the statistics). Accepted sources: a ``.csv`` / ``.tsv`` file,
a ``.parquet`` file, or a directory of Parquet files (one dataset, files in name order).

Statistics are moments merged batch by batch (Chan et al. / Pébay's pairwise update, pure
functions checked against numpy and pandas): count, missing, mean, variance, skewness, min, max.
With a compute backend (``workers=``) the per-batch moments are computed on its workers, at most
``2 * workers`` batches in flight.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from vfl.errors import DataError

DEFAULT_BATCH_ROWS = 262_144
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".txt", ".tsv")


def open_dataset(source: str | Path, *, text_columns: Sequence[str] = ()) -> Any:
    """A ``pyarrow.dataset.Dataset`` over a CSV / Parquet file or a directory of Parquet files.

    ``text_columns`` of a CSV file are read as text exactly as written (ids: ``000133`` is not 133).
    """
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    path = Path(source)
    if not path.exists():
        raise DataError(
            f"data file {path} does not exist; check the path in party.toml or on the command line"
        )
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
            if not files:
                raise DataError(
                    f"data path {path} is a directory with no Parquet file (*.parquet) in it; give a CSV or "
                    "Parquet file, or a folder of Parquet files"
                )
            return ds.dataset([str(f) for f in files], format="parquet")
        suffix = path.suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            return ds.dataset(str(path), format="parquet")
        if suffix in CSV_SUFFIXES:
            parse = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in text_columns})
            return ds.dataset(
                str(path), format=ds.CsvFileFormat(parse_options=parse, convert_options=convert)
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"data file {path} could not be read: {str(exc).splitlines()[0]}") from exc
    raise DataError(f"data file {path} has an unknown type '{path.suffix}'; use .csv or .parquet")


def iter_batches(
    source: str | Path,
    columns: Sequence[str] | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    text_columns: Sequence[str] = (),
) -> Iterator[pa.RecordBatch]:
    """The ``columns`` (default all) of ``source``, ``batch_rows`` rows (at most) at a time, in file order."""
    dataset = open_dataset(source, text_columns=text_columns)
    if columns is not None:
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            present = ", ".join(dataset.schema.names[:30])
            raise DataError(
                f"data file {source} has no column {', '.join(map(repr, missing))}; columns present: {present}"
            )
    try:
        for batch in dataset.to_batches(
            columns=list(columns) if columns is not None else None,
            batch_size=max(1, int(batch_rows)),
            batch_readahead=1,
            fragment_readahead=1,
        ):
            if batch.num_rows:
                yield batch
    except pa.ArrowInvalid as exc:
        raise DataError(f"data file {source} could not be read: {str(exc).splitlines()[0]}") from exc


def read_ids(source: str | Path, id_column: str, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> pd.DataFrame:
    """Only the id column of ``source``, read batch by batch, as a one-column DataFrame (for PSI)."""
    batches = iter_batches(source, [id_column], batch_rows=batch_rows, text_columns=[id_column])
    chunks = [batch.column(0) for batch in batches]
    if not chunks:
        raise DataError(f"data file {source} has no data rows")
    ids = pa.chunked_array(chunks)
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(ids.type.value_type)
    frame = pd.DataFrame({id_column: ids.to_pandas()})
    pa.default_memory_pool().release_unused()  # the decoded batches: keep only the ids
    return frame


def take_rows(
    source: str | Path,
    rows: np.ndarray,
    columns: Sequence[str] | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    text_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """The rows at file positions ``rows`` (in that order: e.g. a party's PSI rows in the shared
    order) of ``columns`` of ``source``, read batch by batch and keeping only those rows.

    The same frame as ``load_table(source).iloc[rows][columns]`` (index 0..len-1), with a peak of one
    batch plus the kept rows, not the whole table. A row position outside the file is a ``DataError``.
    """
    wanted = np.asarray(rows, dtype=np.int64)
    order = np.argsort(wanted, kind="stable")
    ascending = wanted[order]
    kept: list[pa.RecordBatch] = []
    schema = None
    start = 0
    for batch in iter_batches(source, columns, batch_rows=batch_rows, text_columns=text_columns):
        schema = batch.schema
        stop = start + batch.num_rows
        lo, hi = np.searchsorted(ascending, [start, stop])
        if hi > lo:
            kept.append(batch.take(pa.array(ascending[lo:hi] - start)))
        start = stop
    if len(wanted) and (ascending[0] < 0 or ascending[-1] >= start):
        raise DataError(
            f"data file {source} has {start} rows but row {int(ascending[-1] if ascending[-1] >= start else ascending[0])} "
            "is asked for; the data changed since the intersection: run the job again from the start"
        )
    if schema is None:
        raise DataError(f"data file {source} has no data rows")
    table = pa.Table.from_batches(kept, schema=schema)
    del kept
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return _take_columns(table, pa.array(rank))


def _take_columns(table: pa.Table, indices: pa.Array) -> pd.DataFrame:
    """``_to_pandas(table.take(indices))`` one column at a time: each column of ``table`` is let go once
    taken, so the peak is the kept rows plus one column, not two more copies of them."""
    columns = {}
    for name in table.column_names:
        taken = table.column(0).take(indices)
        table = table.remove_column(0)
        columns[name] = _to_pandas(pa.table({name: taken}))[name]
    return pd.DataFrame(columns, copy=False)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as ``load_table`` would give it (dictionary columns decoded, index 0..n-1)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table.to_pandas().reset_index(drop=True)


# --- moments ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Count, missing values, mean, central moment sums ``m2 = sum (x-mean)^2``, ``m3``, min and max."""

    count: int = 0
    missing: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @property
    def variance(self) -> float:
        """Population variance (``numpy.var``, ``ddof=0``)."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count else math.nan

    @property
    def skew(self) -> float:
        """Adjusted Fisher-Pearson skewness, as ``pandas.Series.skew`` computes it (NaN below 3 values)."""
        n = self.count
        if n < 3 or self.m2 <= 0:
            return math.nan if n < 3 else 0.0
        g1 = (self.m3 / n) / (self.m2 / n) ** 1.5
        return g1 * math.sqrt(n * (n - 1)) / (n - 2)


def moments_of(values: np.ndarray) -> Moments:
    """The :class:`Moments` of one batch (NaN counts as missing). A pure function (runs on any worker)."""
    x = np.asarray(values, dtype=np.float64)
    finite = x[~np.isnan(x)]
    missing = int(x.size - finite.size)
    if not finite.size:
        return Moments(missing=missing)
    mean = float(finite.mean())
    d = finite - mean
    return Moments(
        int(finite.size),
        missing,
        mean,
        float(d @ d),
        float((d * d) @ d),
        float(finite.min()),
        float(finite.max()),
    )


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of the union of two disjoint batches (Chan et al., Pébay 2008): exact up to rounding."""
    if not a.count:
        return Moments(b.count, a.missing + b.missing, b.mean, b.m2, b.m3, b.min, b.max)
    if not b.count:
        return Moments(a.count, a.missing + b.missing, a.mean, a.m2, a.m3, a.min, a.max)
    n = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * b.count / n
    m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / n
    m3 = (
        a.m3
        + b.m3
        + delta**3 * a.count * b.count * (a.count - b.count) / (n * n)
        + 3.0 * delta * (a.count * b.m2 - b.count * a.m2) / n
    )
    return Moments(n, a.missing + b.missing, mean, m2, m3, min(a.min, b.min), max(a.max, b.max))


def batch_moments(columns: list[np.ndarray]) -> list[Moments]:
    """:func:`moments_of` for each column of one batch (the unit of work sent to a worker)."""
    return [moments_of(c) for c in columns]


def _numeric(array: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    if pa.types.is_boolean(array.type) or pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        return array.to_numpy(zero_copy_only=False).astype(np.float64)
    raise DataError(f"column '{name}' is not numeric ({array.type}); only numeric columns have moments")


def column_moments(
    source: str | Path,
    columns: Sequence[str],
    *,
    rows: np.ndarray | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    workers: Any = None,
) -> dict[str, Moments]:
    """Per-column :class:`Moments` of numeric ``columns`` of ``source``, streamed batch by batch.

    ``rows`` (sorted file row positions, e.g. a party's aligned training rows) restricts the
    statistics to those rows. ``workers`` (a ``WorkerPool`` or ``DaskBackend``) computes each
    batch's moments on a worker, with at most ``2 * workers.workers`` batches in flight.
    """
    names = list(columns)
    total = [Moments() for _ in names]
    selected = None if rows is None else np.asarray(rows, dtype=np.int64)
    if selected is not None and selected.size > 1 and np.any(np.diff(selected) <= 0):
        raise DataError("column_moments: rows must be sorted file positions without repeats")
    parallel = workers is not None and getattr(workers, "workers", 1) > 1
    pending: deque[Any] = deque()
    window = 2 * getattr(workers, "workers", 1)

    def fold(parts: list[Moments]) -> None:
        for i, part in enumerate(parts):
            total[i] = merge_moments(total[i], part)

    start = 0
    for batch in iter_batches(source, names, batch_rows=batch_rows):
        stop = start + batch.num_rows
        if selected is not None:
            lo, hi = np.searchsorted(selected, [start, stop])
            batch = batch.take(pa.array(selected[lo:hi] - start)) if hi > lo else None
        start = stop
        if batch is None:
            continue
        arrays = [_numeric(batch.column(i), name) for i, name in enumerate(names)]
        if not parallel:
            fold(batch_moments(arrays))
            continue
        pending.append(workers.submit(batch_moments, arrays))
        if len(pending) >= window:
            fold(pending.popleft().result())
    while pending:
        fold(pending.popleft().result())
    return dict(zip(names, total, strict=True))
