"""A party's large data file used without loading it: the columns it needs now, the rest streamed.

For a job on a file above ``[compute] stream_bytes`` (``DEFAULT_STREAM_BYTES``), a party keeps in
memory only its id column and what it needs of every row up front (the guest's label, say); the local
checks of its other columns run in one streamed pass (``column_summaries``: the same checks and
one-line errors as ``vfl.data.check_columns``; ``witness`` gives checks written against a frame a few
rows that carry the same problems), and after the PSI its aligned rows are read with
``vfl.streaming.take_rows`` -- only the shared rows, in the shared order, only the job's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from vfl.column_checks import ColumnSummary, column_problem, merge, summarize, witness
from vfl.data import MAX_CATEGORIES, report_problems
from vfl.errors import DataError
from vfl.streaming import DEFAULT_BATCH_ROWS, _to_pandas, iter_batches, open_dataset, take_rows

DEFAULT_STREAM_BYTES = 256 * 1024 * 1024  # files (or Parquet folders) at least this large are streamed
WITNESS_ROWS = 3  # rows of ``StreamedTable.witness``: a column's missing value, minimum and maximum


def data_bytes(source: str | Path) -> int:
    """The size of a data file, or of every file in a Parquet folder."""
    path = Path(source)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def should_stream(source: str | Path, stream_bytes: int) -> bool:
    """Whether a file is large enough to be streamed rather than loaded (``stream_bytes`` < 0: never)."""
    return stream_bytes >= 0 and Path(source).exists() and data_bytes(source) >= stream_bytes


def column_summaries(
    source: str | Path, columns: Sequence[str], *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> dict[str, ColumnSummary]:
    """The :class:`ColumnSummary` of each of ``columns`` of ``source``, in one streamed pass."""
    total = {name: ColumnSummary() for name in columns}
    for batch in iter_batches(source, list(columns), batch_rows=batch_rows):
        for i, name in enumerate(columns):  # one column of one batch at a time
            column = _to_pandas(pa.table({name: batch.column(i)}))[name]
            total[name] = merge(total[name], summarize(column))
    return total


@dataclass
class StreamedTable:
    """A data file a party reads in batches: its column names, and its checks done at most once."""

    source: Path
    names: list[str]
    id_column: str
    batch_rows: int = DEFAULT_BATCH_ROWS
    checked: dict[tuple[str, ...], str] = field(default_factory=dict)
    summarized: dict[str, ColumnSummary] = field(default_factory=dict)

    @classmethod
    def open(
        cls, source: str | Path, id_column: str, *, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> StreamedTable:
        dataset = open_dataset(source, text_columns=[id_column])
        return cls(Path(source), list(dataset.schema.names), id_column, batch_rows)

    def header(self) -> pd.DataFrame:
        """An empty frame with the file's columns (for the checks that need only the names)."""
        return pd.DataFrame(columns=self.names)

    def load(self, columns: Sequence[str]) -> pd.DataFrame:
        """Every row of ``columns`` (present ones only; the id read as text), read batch by batch."""
        wanted = [c for c in dict.fromkeys(columns) if c in self.names]
        batches = list(
            iter_batches(self.source, wanted, batch_rows=self.batch_rows, text_columns=[self.id_column])
        )
        if not batches:
            raise DataError(f"data file {self.source} has no data rows")
        frame = _to_pandas(pa.Table.from_batches(batches))
        del batches
        pa.default_memory_pool().release_unused()
        return frame

    def summaries(self, columns: Sequence[str]) -> dict[str, ColumnSummary]:
        """The :class:`ColumnSummary` of each of ``columns``; those not summarized yet in one streamed pass."""
        todo = [c for c in dict.fromkeys(columns) if c not in self.summarized]
        if todo:
            self.summarized.update(column_summaries(self.source, todo, batch_rows=self.batch_rows))
            pa.default_memory_pool().release_unused()
        return {c: self.summarized[c] for c in columns}

    def check(self, features: Sequence[str], what: str) -> None:
        """``vfl.data.check_columns`` of ``features``, from one streamed pass (done once per list)."""
        key = tuple(features)
        if key not in self.checked:
            summaries = self.summaries(features)
            problems = [column_problem(n, summaries[n], MAX_CATEGORIES) for n in features]
            self.checked[key] = "; ".join(p for p in problems if p)
        report_problems([self.checked[key]] if self.checked[key] else [], what)

    def witness(self, loaded: pd.DataFrame, values: Sequence[str] | None = None) -> pd.DataFrame:
        """A few rows with every column of the file, for the checks a job makes before any peer is
        contacted: ``loaded``'s columns (every row in memory) as its first rows, the ``values`` columns
        (None: all the others) as values that carry what their streamed summaries found (text,
        missing, infinite, minimum and maximum: ``column_checks.witness``); other columns are empty."""
        rows = len(loaded)
        others = [c for c in self.names if c not in loaded.columns]
        summaries = self.summaries(others if values is None else [c for c in values if c in others])
        head = np.arange(WITNESS_ROWS) % max(rows, 1)
        columns = {}
        for name in self.names:
            if name in loaded.columns:
                columns[name] = loaded[name].iloc[head].reset_index(drop=True)
            elif name in summaries:
                columns[name] = witness(summaries[name], rows, WITNESS_ROWS)
            else:
                columns[name] = pd.Series([np.nan] * WITNESS_ROWS)
        return pd.DataFrame(columns)

    def aligned(self, frame: pd.DataFrame, rows: np.ndarray, features: Sequence[str]) -> pd.DataFrame:
        """The aligned rows: ``frame``'s columns and ``features`` read from the file (only those rows)."""
        kept = frame.iloc[rows].reset_index(drop=True)
        extra = [c for c in dict.fromkeys(features) if c not in kept.columns]
        if not extra:
            return kept
        taken = take_rows(self.source, np.asarray(rows), extra, batch_rows=self.batch_rows)
        pa.default_memory_pool().release_unused()  # the decoded batches: keep only the aligned rows
        return pd.concat([kept, taken], axis=1)
