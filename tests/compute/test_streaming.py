"""Streaming input: ids and column statistics read in record batches from CSV, Parquet and Parquet folders."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vfl.crypto import WorkerPool
from vfl.data import load_table
from vfl.errors import DataError
from vfl.streaming import (
    Moments,
    column_moments,
    iter_batches,
    merge_moments,
    moments_of,
    read_ids,
    take_rows,
)


@pytest.fixture()
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 5003
    heavy = rng.lognormal(sigma=2.0, size=n)
    x = rng.normal(3.0, 2.0, size=n)
    x[rng.choice(n, 40, replace=False)] = np.nan
    return pd.DataFrame(
        {"id": [f"u{i}" for i in range(n)], "x": x, "heavy": heavy, "k": rng.integers(0, 9, n)}
    )


def _sources(tmp_path, frame):
    csv = tmp_path / "data.csv"
    frame.to_csv(csv, index=False)
    single = tmp_path / "data.parquet"
    frame.to_parquet(single, index=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 4)):
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[part], preserve_index=False), folder / f"part-{i}.parquet"
        )
    return {"csv": csv, "parquet": single, "folder": folder}


def _reference(values: np.ndarray) -> tuple[float, ...]:
    v = values[~np.isnan(values)]
    return (
        len(v),
        float(np.mean(v)),
        float(np.var(v)),
        float(pd.Series(v).skew()),
        float(v.min()),
        float(v.max()),
    )


def _as_tuple(m: Moments) -> tuple[float, ...]:
    return m.count, m.mean, m.variance, m.skew, m.min, m.max


def test_merged_moments_equal_numpy_and_pandas_in_any_split():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.exponential(size=997), [np.nan] * 3])
    for cuts in ([500], [1, 2, 3], [10, 400, 401, 999]):
        parts = np.split(values, cuts)
        total = Moments()
        for part in parts:
            total = merge_moments(total, moments_of(part))
        assert total.missing == 3
        np.testing.assert_allclose(_as_tuple(total), _reference(values), rtol=1e-12)
    assert math.isnan(moments_of(np.array([1.0, 2.0])).skew)


@pytest.mark.parametrize("kind", ["csv", "parquet", "folder"])
def test_ids_and_moments_stream_in_small_batches(tmp_path, frame, kind):
    source = _sources(tmp_path, frame)[kind]
    assert max(b.num_rows for b in iter_batches(source, ["id"], batch_rows=512)) <= 512
    ids = read_ids(source, "id", batch_rows=512)
    assert list(ids.columns) == ["id"] and ids["id"].tolist() == frame["id"].tolist()
    stats = column_moments(source, ["x", "heavy", "k"], batch_rows=512)
    for name in ("x", "heavy", "k"):
        np.testing.assert_allclose(
            _as_tuple(stats[name]), _reference(frame[name].to_numpy(float)), rtol=1e-10
        )
    assert stats["x"].missing == 40


def test_moments_of_selected_rows_and_on_workers_match_the_subset(tmp_path, frame):
    source = _sources(tmp_path, frame)["parquet"]
    rows = np.sort(np.random.default_rng(3).choice(len(frame), 1200, replace=False))
    expected = column_moments(source, ["heavy"], rows=rows, batch_rows=700)["heavy"]
    np.testing.assert_allclose(_as_tuple(expected), _reference(frame["heavy"].to_numpy()[rows]), rtol=1e-10)
    with WorkerPool(2) as pool:
        on_workers = column_moments(source, ["heavy"], rows=rows, batch_rows=700, workers=pool)["heavy"]
    assert on_workers == expected  # same batches merged in the same order: bit for bit


def test_a_parquet_folder_loads_as_one_table_and_errors_are_one_line(tmp_path, frame):
    sources = _sources(tmp_path, frame)
    pd.testing.assert_frame_equal(load_table(sources["folder"]), frame)
    with pytest.raises(DataError, match="no column 'nope'"):
        next(iter_batches(sources["csv"], ["nope"]))
    with pytest.raises(DataError, match="not numeric"):
        column_moments(sources["csv"], ["id"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is a directory with no Parquet file") as info:
        read_ids(empty, "id")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["csv", "parquet", "folder"])
def test_streamed_aligned_rows_give_the_in_memory_matrices(tmp_path, frame, kind):
    """PSI rows (any order) taken batch by batch: the same frame, preprocessor and model matrix as
    ``load_table(...).iloc[rows]``, for every source kind and batches smaller than the table."""
    from vfl.data import Preprocessor

    frame = frame.assign(shop=np.random.default_rng(2).choice(["a", "b", "c"], len(frame)))
    source = _sources(tmp_path, frame)[kind]
    rows = np.random.default_rng(5).permutation(len(frame))[:1800]  # the shared order, not sorted
    columns = ["x", "heavy", "k", "shop"]
    in_memory = load_table(source, id_column="id").iloc[rows].reset_index(drop=True)
    streamed = take_rows(source, rows, ["id", *columns], batch_rows=700, text_columns=["id"])
    assert streamed["id"].tolist() == frame["id"].to_numpy()[rows].tolist()
    train = np.arange(0, len(rows), 2)
    fitted = Preprocessor.fit(in_memory.iloc[train][columns])
    fitted_streamed = Preprocessor.fit(streamed.iloc[train][columns])
    assert fitted_streamed.to_dict() == fitted.to_dict()
    np.testing.assert_array_equal(
        fitted_streamed.transform(streamed[columns]), fitted.transform(in_memory[columns])
    )


def test_take_rows_refuses_rows_beyond_the_file(tmp_path, frame):
    source = _sources(tmp_path, frame)["parquet"]
    with pytest.raises(DataError, match="has 5003 rows but row 5003") as info:
        take_rows(source, np.array([3, 5003]), ["x"])
    assert "\n" not in str(info.value)
    assert take_rows(source, np.array([], dtype=np.int64), ["x"]).shape == (0, 1)
