"""A training job on a data file streamed in batches gives the model of the same job loaded in memory.

Real parties (``run_party``: guest, host, arbiter in threads over Flight + TLS on loopback), the data
as a CSV file and as a folder of Parquet files; ``[compute] stream_bytes = 0`` streams every file,
the default keeps these small files in memory. The bad-input checks run on the streamed pass and
give the in-memory path's one-line errors, before any peer is contacted.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.faults.helpers import FAST, Fed, guest_frame, host_frame, make_federation
from vfl.config import Federation, JobConfig, PartyConfig
from vfl.data import check_columns
from vfl.errors import ConfigError, DataError
from vfl.parties.runner import _load_data, build_job, run_party
from vfl.streamed_table import StreamedTable, column_summaries


def _stream(fed: Fed, name: str, *, stream_bytes: int = 0, batch_rows: int = 37) -> None:
    party = fed.party(name)
    party.stream_bytes, party.batch_rows = stream_bytes, batch_rows
    party.save()


def _as_folder(fed: Fed, name: str) -> None:
    """Replace a party's CSV by a folder of three Parquet files (same rows, same order)."""
    party = fed.party(name)
    frame = pd.read_csv(party.data, dtype={"id": str})
    folder = party.data.with_suffix("")
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False), folder / f"p{i}.parquet")
    party.data = folder
    party.save()


def run_over_flight(fed: Fed, job: Path) -> None:
    """Every party of the federation runs ``job`` with ``run_party``, in threads over Flight + TLS."""
    errors: list[BaseException] = []

    def body(name: str) -> None:
        try:
            run_party(fed.ws[name], job, settings=FAST, workers=1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(n,), daemon=True) for n in ("guest", "host", "arbiter")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors


def _train(fed: Fed) -> dict[str, np.ndarray]:
    run_over_flight(fed, fed.job)
    weights = {}
    for name in ("guest", "host"):
        shard = json.loads((fed.party(name).output_dir / "job-1" / "model.json").read_text())
        weights[name] = np.asarray(shard["weights"], dtype=float)
    return weights


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    guest = guest_frame(150)
    host = host_frame(170).iloc[::-1].reset_index(drop=True)  # a different order: the PSI aligns them
    return guest, host


@pytest.mark.parametrize("layout", ["csv", "parquet-folder"])
def test_streamed_training_gives_the_in_memory_model(tmp_path: Path, layout: str) -> None:
    guest, host = _frames()
    reference = _train(make_federation(tmp_path / "memory", guest=guest, host=host))
    fed = make_federation(tmp_path / "streamed", guest=guest, host=host)
    for name in ("guest", "host"):
        if layout == "parquet-folder":
            _as_folder(fed, name)
        _stream(fed, name)
    streamed = _train(fed)
    for name in ("guest", "host"):
        np.testing.assert_allclose(streamed[name], reference[name], rtol=0, atol=1e-9)


def _load(fed: Fed, name: str):  # noqa: ANN202
    party = fed.party(name)
    job = build_job(JobConfig.load(fed.job), Federation.load(fed.ws[name] / "federation.toml"))
    return _load_data(party, job, None, with_label=True)


BAD = {
    "text": lambda f: f.assign(b=[f"t{i}" for i in range(len(f))]),
    "missing": lambda f: f.assign(b=np.nan),
    "infinite": lambda f: f.assign(b=np.where(np.arange(len(f)) == 100, np.inf, f["b"])),
    "constant": lambda f: f.assign(b=2.5),
    "too-large": lambda f: f.assign(b=np.where(np.arange(len(f)) == 90, 1e120, f["b"])),
    "labels": lambda f: f.assign(y=np.where(np.arange(len(f)) == 3, 7, f["y"])),
}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_bad_inputs_give_the_same_error_streamed(tmp_path: Path, problem: str) -> None:
    guest = BAD[problem](guest_frame(150))
    memory = make_federation(tmp_path / "memory", guest=guest)
    with pytest.raises(DataError) as expected:
        _load(memory, "guest")
    fed = make_federation(tmp_path / "streamed", guest=guest)
    _stream(fed, "guest")
    with pytest.raises(DataError) as streamed:
        _load(fed, "guest")
    assert str(streamed.value) == str(expected.value)


def test_streamed_load_keeps_only_id_and_label(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed")
    _stream(fed, "guest")
    _stream(fed, "host")
    frame, streamed = _load(fed, "guest")
    assert list(frame.columns) == ["id", "y"] and isinstance(streamed, StreamedTable)
    frame, streamed = _load(fed, "host")
    assert list(frame.columns) == ["id"] and streamed is not None
    fed2 = make_federation(tmp_path / "default")  # small files: loaded as today
    frame, streamed = _load(fed2, "guest")
    assert streamed is None and list(frame.columns) == ["id", "y", "a", "b"]


def test_column_summaries_match_check_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {"x": rng.normal(size=400), "k": rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 400), "z": 1.0}
    )
    frame.loc[::7, "x"] = np.nan
    path = tmp_path / "d.parquet"
    frame.to_parquet(path, index=False)
    summaries = column_summaries(path, ["x", "k", "z"], batch_rows=33)
    assert summaries["x"].values == frame["x"].notna().sum()
    assert summaries["x"].low == frame["x"].min() and summaries["x"].high == frame["x"].max()
    assert len(summaries["k"].categories) == frame["k"].nunique() and summaries["k"].text
    with pytest.raises(DataError) as expected:
        check_columns(frame, what="w")
    table = StreamedTable.open(path, "x", batch_rows=33)
    with pytest.raises(DataError) as streamed:
        table.check(["x", "k", "z"], "w")
    assert str(streamed.value) == str(expected.value)


def test_stream_settings_in_party_toml(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed")
    _stream(fed, "host", stream_bytes=1000, batch_rows=500)
    party = fed.party("host")
    assert (party.stream_bytes, party.batch_rows) == (1000, 500)
    assert fed.party("guest").stream_bytes == 256 * 1024 * 1024  # the documented default
    toml = fed.ws["host"] / "party.toml"
    toml.write_text(toml.read_text().replace("batch_rows = 500", "batch_rows = 0"))
    with pytest.raises(ConfigError, match=r"\[compute\]: batch_rows must be >= 1, got 0"):
        PartyConfig.load(fed.ws["host"])
