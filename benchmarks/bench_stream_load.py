"""Benchmark: a party's load / check / prepare steps on a large file, in memory vs streamed (issue 17).

A guest's data file of ``--rows`` rows x 20 feature columns (+ id and label; Parquet, or CSV with
``--format csv``). Each path runs in its own spawned process, through the job's own code:
``parties.runner._load_data`` (what ``vfl run`` does before any peer is contacted: ids, label and the
column checks), the role's own pre-contact checks, and then the post-PSI step on half the file's rows
in a shuffled shared order. ``--kind``:

- ``train``: the aligned rows and ``prepare_features`` (the scaler fit and the model matrix);
- ``predict``: the model's columns of the aligned rows (``alignment.aligned_rows``) and the guest's
  partial scores ``transform(X) @ w`` of a logistic model on all 20 columns;
- ``audience``: an audience job with one segment column (``band``, 4 values) and 2 metrics of the
  guest: ``check_inputs``, then the cell codes and metric values of the aligned rows.

The baseline is the same party with ``[compute] stream_bytes = -1`` (today's whole-table load),
measured in the same run.

    python benchmarks/bench_stream_load.py                       # 1M x 20, Parquet, 262,144-row batches
    python benchmarks/bench_stream_load.py --kind predict --format csv
    python benchmarks/bench_stream_load.py --rows 200000 --kind audience --batch-rows 65536

Reported: wall seconds of each step, peak resident memory (ru_maxrss) of the party's process, and
whether both paths give the same result (max abs difference of the model matrix, the partial scores,
or the cell codes and metrics).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = [f"x{j}" for j in range(20)]


def party_process(
    workspace: str, job_file: str, rows_path: str, stream_bytes: int, batch_rows: int, out: Any
) -> None:
    """One party's load and prepare steps (the code its job runs), timed, with its peak memory."""
    from vfl.config import Federation, JobConfig, PartyConfig
    from vfl.parties.jobs import job_kind
    from vfl.parties.runner import _load_data, build_job

    party = PartyConfig.load(workspace)
    party.stream_bytes, party.batch_rows = stream_bytes, batch_rows
    job = build_job(JobConfig.load(job_file), Federation.load(Path(workspace) / "federation.toml"))
    rows = np.load(rows_path)
    t0 = time.perf_counter()
    frame, streamed = _load_data(party, job, None, with_label=job_kind(job.kind).needs_label)
    t1 = time.perf_counter()
    result = KINDS[job.kind](party, job, frame, streamed, rows)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((streamed is not None, t1 - t0, t2 - t1, peak, result))


def _psi_result(rows: np.ndarray, frame: pd.DataFrame) -> Any:
    """What the PSI would leave this party with: ``rows`` of its file in the shared order."""
    from vfl.psi.options import PsiResult

    ids = frame["id"].iloc[rows].reset_index(drop=True)
    return PsiResult("guest", "guest", len(rows), rows, ids, True, {"guest": len(frame)})


def train_step(party: Any, job: Any, frame: pd.DataFrame, streamed: Any, rows: np.ndarray) -> np.ndarray:
    from vfl.parties.common import prepare_features

    aligned = streamed.aligned(frame, rows, COLUMNS) if streamed else frame.iloc[rows].reset_index(drop=True)
    train = np.arange(0, len(rows), 5)
    return prepare_features(aligned, COLUMNS, train, job.options, intercept=True)[1]


def predict_step(party: Any, job: Any, frame: pd.DataFrame, streamed: Any, rows: np.ndarray) -> np.ndarray:
    from vfl.data import require_columns
    from vfl.parties.alignment import aligned_rows, checked_view
    from vfl.parties.runner import _load_model

    shard = _load_model(party, job, streamed.header() if streamed is not None else frame)
    needed = ["id", *shard.scaler().input_names]
    require_columns(checked_view(frame, streamed, ()), needed, what="the guest's data")
    aligned = aligned_rows(_psi_result(rows, frame), frame, streamed, needed)
    return shard.scaler().transform(aligned) @ shard.weight_vector[1:]


def audience_step(party: Any, job: Any, frame: pd.DataFrame, streamed: Any, rows: np.ndarray) -> np.ndarray:
    from vfl.analytics import crosstab as ct
    from vfl.parties.audience import check_inputs

    categories = check_inputs(job, party.id, frame, id_column="id", label="y", offered=None)
    aligned = frame.iloc[rows].reset_index(drop=True)  # the audience role's own step (every row in memory)
    cells = ct.cell_codes(aligned, categories)
    return np.column_stack([cells, aligned[["x0", "x1"]].to_numpy(dtype=float)])


KINDS = {"train": train_step, "predict": predict_step, "audience": audience_step}


def make_party(tmp: Path, n: int, fmt: str, kind: str) -> tuple[Path, Path]:
    """A guest workspace (and a job file of ``kind``) whose data file has ``n`` rows x 20 columns."""
    from vfl.cli.workspace import DataSpec, create_workspace
    from vfl.config import Federation

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"id": [f"customer-{i:09d}" for i in range(n)], "y": rng.integers(0, 2, n)})
    for name in COLUMNS:
        frame[name] = rng.normal(size=n)
    if kind == "audience":
        frame["band"] = rng.choice(["a", "b", "c", "d"], n)
    data = tmp / f"guest.{fmt}"
    frame.to_parquet(data, index=False, row_group_size=262_144) if fmt == "parquet" else frame.to_csv(
        data, index=False
    )
    sample = frame.iloc[:20_000][COLUMNS].copy()
    del frame
    federation = Federation()
    cards = []
    for name, role in (("guest", "guest"), ("host", "host")):
        spec = DataSpec(data, "id", "y" if role == "guest" else None, None)
        _, card, _ = create_workspace(tmp / name, party_id=name, role=role, listen="127.0.0.1:1", data=spec)
        cards.append(card)
    for card in cards:
        federation.add(card)
    federation.save(tmp / "guest" / "federation.toml")
    job = tmp / "job.toml"
    job.write_text(job_config(kind).to_toml())
    if kind == "predict":
        save_model(tmp / "guest" / "out" / "model" / "model.json", sample)
    return tmp / "guest", job


def job_config(kind: str) -> Any:
    from vfl.config import JobConfig

    if kind == "predict":
        return JobConfig(id="bench", kind="predict", predict={"model": "model"})
    if kind == "audience":
        audience = {
            "segments": {"guest": ["band"]}, "metrics": {"guest": ["x0", "x1"]},
            "bounds": {"x0": [-5.0, 5.0], "x1": [-5.0, 5.0]}, "key_bits": 1024, "k": 2,
        }  # fmt: skip
        return JobConfig(id="bench", kind="audience", sections={"audience": audience})
    return JobConfig(id="bench", kind="train", train={"key_bits": 1024})


def save_model(path: Path, sample: pd.DataFrame) -> None:
    """A guest shard of a logistic model on all 20 columns (its scaler fitted on ``sample``)."""
    from vfl.data import Preprocessor
    from vfl.model import INTERCEPT, ModelShard

    scaler = Preprocessor.fit(sample)
    weights = np.random.default_rng(7).normal(size=len(COLUMNS) + 1).tolist()
    shard = ModelShard("model", "guest", "guest", [INTERCEPT, *COLUMNS], weights, scaler.to_dict(), {})
    path.parent.mkdir(parents=True)
    shard.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument("--batch-rows", type=int, default=262_144)
    parser.add_argument("--shared", type=float, default=0.5, help="fraction of the rows in the intersection")
    parser.add_argument(
        "--kind", choices=sorted(KINDS), default="train", help="the kind of job the party runs"
    )
    args = parser.parse_args()
    print(
        f"bench_stream_load: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    context = mp.get_context("spawn")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workspace, job = make_party(Path(tmp), args.rows, args.format, args.kind)
        rows_path = Path(tmp) / "rows.npy"
        np.save(rows_path, np.random.default_rng(6).permutation(args.rows)[: int(args.rows * args.shared)])
        size = sum(p.stat().st_size for p in Path(tmp).glob("guest.*"))
        for stream_bytes in (-1, 0):  # baseline first: the whole table, as today
            out = context.Queue()
            proc = context.Process(
                target=party_process,
                args=(str(workspace), str(job), str(rows_path), stream_bytes, args.batch_rows, out),
            )
            proc.start()
            results.append(out.get(timeout=3600))
            proc.join()
    base = results[0]
    print(
        f"\nguest party of a {args.kind} job, {args.rows:,} rows x 20 columns ({args.format}, {size / 2**20:.0f} MB), "
        f"{int(args.rows * args.shared):,} shared rows, batches of {args.batch_rows:,} rows"
    )
    print(f"{'path':<26} | {'load+check s':>12} | {'align+prepare s':>15} | {'peak MB':>7} | {'ratio':>5}")
    print("-" * 78)
    for streamed, load, prep, peak, _ in results:
        name = "streamed (take_rows)" if streamed else "in memory (load_table)"
        print(f"{name:<26} | {load:12.1f} | {prep:15.1f} | {peak:7.0f} | {peak / base[3]:4.2f}x")
    diff = float(np.max(np.abs(results[0][4] - results[1][4])))
    print(f"peak MB = max resident memory of the party's process; results differ by at most {diff:.1e}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)


if __name__ == "__main__":
    main()
