"""Predict, screen, segment and audience jobs on a data file streamed in batches give the results of the
same jobs on the file loaded in memory.

Each party loads its data as ``vfl run`` does (``runner._load_data``: ``[compute] stream_bytes = 0``
streams every file) and runs its role through the job registry, the parties in threads over the
in-process network (so the audience job can use the noise-off hook of its exactness tests); the model
scored is trained by real parties over Flight + TLS. The data as a CSV file and as a folder of Parquet
files. A bad column gives the in-memory path's one-line error on the streamed path too.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.compute.test_streamed_training import _as_folder, _stream, _train, run_over_flight
from tests.faults.helpers import Fed, guest_frame, host_frame, make_federation
from vfl.config import JobConfig
from vfl.crypto import WorkerPool
from vfl.errors import DataError
from vfl.parties.context import RoleContext
from vfl.parties.jobs import job_kind, run_role
from vfl.parties.runner import _load_data, _load_model, build_job
from vfl.parties.simulation import run_parties
from vfl.streamed_table import StreamedTable
from vfl.transport.local import LocalNetwork

LAYOUTS = ["csv", "parquet-folder"]


def _job(fed: Fed, name: str, kind: str, **sections: dict[str, Any]) -> Path:
    predict = sections.pop("predict", {})
    config = JobConfig(id=name, kind=kind, predict=predict, sections=sections)
    return fed.write_job(config.to_toml(), fed.base / f"{name}.toml")


def _run(fed: Fed, job_file: Path, *, noise_off: bool = False) -> dict[str, Any]:
    """Every data party of the job: its data loaded and checked as ``vfl run`` does, then its role."""
    config = JobConfig.load(job_file)
    job = build_job(config, fed.federation())
    kind = job_kind(config.kind)
    network = LocalNetwork(list(job.parties))
    roles = {}
    with WorkerPool(1) as pool:
        for name in job.parties:
            party = fed.party(name)
            frame, streamed = _load_data(party, job, None, with_label=kind.needs_label)
            if kind.precheck is not None:
                kind.precheck(job, name, frame, party.id_column, party.label_column, party.columns)
            header = streamed.header() if streamed is not None else frame
            ctx = RoleContext(
                job.session(network.channel(name)), job, frame, id_column=party.id_column,
                label=party.label_column, columns=party.columns, positive=party.positive,
                output_dir=party.output_dir / config.id, workers=pool, streamed=streamed,
                model=_load_model(party, job, header) if kind.needs_model else None,
                segment_policy=party.segment_policy, disable_noise_for_tests=noise_off,
            )  # fmt: skip
            roles[name] = lambda ctx=ctx: run_role(config.kind, ctx)
        return run_parties(network, roles)


def _federations(tmp_path: Path, layout: str, guest: pd.DataFrame, host: pd.DataFrame) -> tuple[Fed, Fed]:
    """The same parties and data twice: loaded in memory (the default for small files), and streamed."""
    memory = make_federation(tmp_path / "memory", guest=guest, host=host)
    streamed = make_federation(tmp_path / "streamed", guest=guest, host=host)
    for name in ("guest", "host"):
        if layout == "parquet-folder":
            _as_folder(streamed, name)
        _stream(streamed, name)
    return memory, streamed


def _copy_model(source: Fed, target: Fed, job: str) -> None:
    for name in ("guest", "host"):
        shutil.copytree(
            source.party(name).output_dir / job, target.party(name).output_dir / job, dirs_exist_ok=True
        )


def _lr_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    guest = guest_frame(150)
    host = host_frame(170).iloc[::-1].reset_index(drop=True)  # a different order: the PSI aligns them
    return guest, host


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_screen_segment_streamed_give_the_in_memory_results(tmp_path: Path, layout: str) -> None:
    memory, streamed = _federations(tmp_path, layout, *_lr_frames())
    _train(memory)  # job-1: a logistic regression trained over Flight, then scored by both federations
    _copy_model(memory, streamed, "job-1")
    segment = {"k": 2, "min_size": 10, "k_threshold": 5, "key_bits": 1024, "local_k": 3}
    for fed in (memory, streamed):
        _job(fed, "score", "predict", predict={"model": "job-1"})
        _job(fed, "screen", "screen", screen={"key_bits": 1024, "min_bin_size": 10})
        _job(fed, "seg", "segment", segment=segment)
    results = {}
    for label, fed in (("memory", memory), ("streamed", streamed)):
        results[label] = {job: _run(fed, fed.base / f"{job}.toml") for job in ("score", "screen", "seg")}
    _copy_model(memory, streamed, "seg")  # the streamed federation scores with the same segment model
    for fed in (memory, streamed):  # assigning customers to segments: the host's policy allows it
        toml = fed.ws["host"] / "party.toml"
        toml.write_text(toml.read_text() + "\n[segment]\nrelease_membership = true\n")
    for label, fed in (("memory", memory), ("streamed", streamed)):
        shutil.rmtree(fed.party("guest").output_dir / "assign", ignore_errors=True)
        _job(fed, "assign", "predict", predict={"model": "seg"})
        results[label]["assign"] = _run(fed, fed.base / "assign.toml")
    mem, st = results["memory"], results["streamed"]
    scores = mem["score"]["guest"].result
    assert len(scores) == 150
    pd.testing.assert_frame_equal(st["score"]["guest"].result, scores, rtol=0, atol=1e-9)
    run_over_flight(streamed, _job(streamed, "score-flight", "predict", predict={"model": "job-1"}))
    over_flight = pd.read_csv(
        streamed.party("guest").output_dir / "score-flight" / "scores.csv", dtype={"id": str}
    )
    pd.testing.assert_frame_equal(over_flight, scores, rtol=0, atol=1e-9)  # vfl run's own path: the same
    assert st["score"]["host"].result == mem["score"]["host"].result == 150
    pd.testing.assert_frame_equal(st["screen"]["guest"].result.iv, mem["screen"]["guest"].result.iv)
    pd.testing.assert_frame_equal(st["screen"]["guest"].result.woe, mem["screen"]["guest"].result.woe)
    for name in ("guest", "host"):
        a, b = mem["seg"][name].result, st["seg"][name].result
        assert a.columns == b.columns and a.intersection == b.intersection == 150
        # the shared order is fresh in every PSI (and k-means depends on it): order-free results only
        assert sorted(b.ids) == sorted(a.ids) and np.bincount(b.local.labels).sum() == 150
        np.testing.assert_allclose(b.local.scaler.mean, a.local.scaler.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(b.local.scaler.std, a.local.scaler.std, rtol=0, atol=1e-12)
    by_id = [r["assign"]["guest"].result.sort_values("id").reset_index(drop=True) for r in (mem, st)]
    assert len(by_id[0]) == 150 and by_id[0]["segment"].nunique() > 1
    pd.testing.assert_frame_equal(by_id[1], by_id[0])  # the same model: every customer's segment
    assert st["assign"]["host"].result == mem["assign"]["host"].result == 150


def _audience_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(11)
    guest = guest_frame(150).assign(band=rng.choice(["p", "q", "r"], 150), spend=rng.uniform(0, 90, 150))
    host = host_frame(170).assign(tier=rng.choice(["s", "t"], 170), bal=rng.uniform(0, 40, 170))
    return guest, host.iloc[::-1].reset_index(drop=True)


AUDIENCE = {
    "segments": {"guest": ["band"], "host": ["tier"]},
    "metrics": {"guest": ["spend"], "host": ["bal"]},
    "bounds": {"spend": [0.0, 100.0], "bal": [0.0, 50.0]},
    "key_bits": 1024,
    "k": 2,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_audience_streamed_gives_the_in_memory_crosstab(tmp_path: Path, layout: str) -> None:
    memory, streamed = _federations(tmp_path, layout, *_audience_frames())
    runs = {}
    for label, fed in (("memory", memory), ("streamed", streamed)):
        runs[label] = _run(fed, _job(fed, "aud", "audience", audience=AUDIENCE), noise_off=True)
    for name in ("guest", "host"):
        a, b = runs["memory"][name].result, runs["streamed"][name].result
        pd.testing.assert_frame_equal(b.overlap, a.overlap)
        for partner, table in a.crosstabs.items():
            pd.testing.assert_frame_equal(b.crosstabs[partner], table)
    by_segment = runs["streamed"]["guest"].result.overlap_by_segment
    pd.testing.assert_frame_equal(by_segment, runs["memory"]["guest"].result.overlap_by_segment)
    assert float(runs["memory"]["guest"].result.crosstabs["host"]["count"].sum()) == 150.0  # exact: noise off


def test_streamed_jobs_keep_only_the_id_and_what_is_needed_up_front(tmp_path: Path) -> None:
    guest, host = _audience_frames()
    fed = make_federation(tmp_path / "fed", guest=guest, host=host)
    _stream(fed, "guest")
    _stream(fed, "host")
    kept = {
        "predict": (["id"], ["id"]),
        "screen": (["id", "y"], ["id"]),
        "segment": (["id", "y"], ["id"]),
        "audience": (["id", "y", "band", "spend"], ["id", "tier", "bal"]),
    }
    sections = {"segment": {"segment": {"outcome": "y"}}, "audience": {"audience": AUDIENCE}}
    for kind, (at_guest, at_host) in kept.items():
        extra = {"predict": {"model": "m"}} if kind == "predict" else sections.get(kind, {})
        job = build_job(JobConfig.load(_job(fed, kind, kind, **extra)), fed.federation())
        for name, expected in (("guest", at_guest), ("host", at_host)):
            frame, table = _load_data(fed.party(name), job, None, with_label=job_kind(kind).needs_label)
            assert isinstance(table, StreamedTable) and list(frame.columns) == expected, (kind, name)


BAD = {
    "text": lambda f: f.assign(c=[f"t{i}" for i in range(len(f))]),
    "missing": lambda f: f.assign(c=np.where(np.arange(len(f)) == 150, np.nan, f["c"])),
    "infinite": lambda f: f.assign(c=np.where(np.arange(len(f)) == 160, np.inf, f["c"])),
}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_a_bad_column_gives_the_same_error_streamed(tmp_path: Path, problem: str) -> None:
    """A host's bad segmentation column (in a late batch): the same one-line error, before any PSI."""
    guest, host = _lr_frames()
    errors = []
    for label in ("memory", "streamed"):
        fed = make_federation(tmp_path / label, guest=guest, host=BAD[problem](host))
        if label == "streamed":
            _stream(fed, "host")
        with pytest.raises(DataError) as caught:
            _run(
                fed,
                _job(
                    fed,
                    "seg",
                    "segment",
                    segment={"k": 2, "min_size": 10, "k_threshold": 5, "key_bits": 1024},
                ),
            )
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and errors[0].startswith("host:")


def test_witness_rows_show_what_the_whole_column_shows() -> None:
    """``column_checks.witness``: text, missing values, infinities, minimum and maximum, as the column."""
    from vfl.column_checks import summarize, witness

    rng = np.random.default_rng(4)
    x = rng.normal(size=500)
    columns = {
        "plain": pd.Series(x),
        "missing": pd.Series(np.where(np.arange(500) == 480, np.nan, x)),
        "infinite": pd.Series(np.where(np.arange(500) == 7, -np.inf, x)),
        "text": pd.Series(rng.choice(["u", "v"], 500), dtype=object),
        "empty": pd.Series([np.nan] * 500),
        "ints": pd.Series(rng.integers(0, 9, 500)),
    }
    for name, column in columns.items():
        shown = witness(summarize(column), len(column))
        assert len(shown) == 3, name
        assert pd.api.types.is_numeric_dtype(shown) == pd.api.types.is_numeric_dtype(column), name
        assert shown.isna().any() == column.isna().any(), name
        if pd.api.types.is_numeric_dtype(column) and column.notna().any():
            assert np.nanmin(shown) == np.nanmin(column) and np.nanmax(shown) == np.nanmax(column), name
            assert np.isinf(shown).any() == np.isinf(column).any(), name
