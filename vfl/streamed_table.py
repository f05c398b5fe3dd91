"""A party's large data file used without loading it: the columns it needs now, the rest streamed.

For a training job on a file above ``[compute] stream_bytes`` (``DEFAULT_STREAM_BYTES``), a party
keeps in memory only its id column (and, at the guest, the label and the exposure); the local
checks of its feature columns run in one streamed pass (``column_summaries``: the same checks and
one-line errors as ``vfl.data.check_columns``), and after the PSI its aligned rows are read with
``vfl.streaming.take_rows`` -- only the shared rows, in the shared order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from vfl.column_checks import ColumnSummary, column_problem, merge, summarize
from vfl.data import MAX_CATEGORIES, report_problems
from vfl.errors import DataError
from vfl.streaming import DEFAULT_BATCH_ROWS, _to_pandas, iter_batches, open_dataset, take_rows

DEFAULT_STREAM_BYTES = 256 * 1024 * 1024  # files (or Parquet folders) at least this large are streamed


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

    def check(self, features: Sequence[str], what: str) -> None:
        """``vfl.data.check_columns`` of ``features``, from one streamed pass (done once per list)."""
        key = tuple(features)
        if key not in self.checked:
            summaries = column_summaries(self.source, features, batch_rows=self.batch_rows)
            problems = [column_problem(n, summaries[n], MAX_CATEGORIES) for n in features]
            self.checked[key] = "; ".join(p for p in problems if p)
            pa.default_memory_pool().release_unused()
        report_problems([self.checked[key]] if self.checked[key] else [], what)

    def aligned(self, frame: pd.DataFrame, rows: np.ndarray, features: Sequence[str]) -> pd.DataFrame:
        """The aligned rows: ``frame``'s columns and ``features`` read from the file (only those rows)."""
        kept = frame.iloc[rows].reset_index(drop=True)
        extra = [c for c in features if c not in kept.columns]
        taken = take_rows(self.source, np.asarray(rows), extra, batch_rows=self.batch_rows)
        pa.default_memory_pool().release_unused()  # the decoded batches: keep only the aligned rows
        return pd.concat([kept, taken], axis=1)
