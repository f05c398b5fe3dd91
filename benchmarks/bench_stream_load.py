"""Benchmark: a training party's load / check / prepare steps on a large file, in memory vs streamed (issue 17).

A guest's data file of ``--rows`` rows x 20 feature columns (+ id and label; Parquet, or CSV with
``--format csv``). Each path runs in its own spawned process, through the job's own code:
``parties.runner._load_data`` (what ``vfl run`` does before any peer is contacted: ids, label and the
column checks) and then the post-PSI step (the aligned rows -- half the file, in a shuffled shared
order -- and ``prepare_features``, the scaler fit and the model matrix). The baseline is the same
party with ``[compute] stream_bytes = -1`` (today's whole-table load), measured in the same run.

    python benchmarks/bench_stream_load.py                       # 1M x 20, Parquet, 262,144-row batches
    python benchmarks/bench_stream_load.py --rows 200000 --format csv --batch-rows 65536

Reported: wall seconds of each step, peak resident memory (ru_maxrss) of the party's process, and
whether both paths give the same model matrix (max abs difference).
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
    """One party's load and prepare steps (the code a training job runs), timed, with its peak memory."""
    from vfl.config import Federation, JobConfig, PartyConfig
    from vfl.parties.common import prepare_features
    from vfl.parties.runner import _load_data, build_job

    party = PartyConfig.load(workspace)
    party.stream_bytes, party.batch_rows = stream_bytes, batch_rows
    job = build_job(JobConfig.load(job_file), Federation.load(Path(workspace) / "federation.toml"))
    rows = np.load(rows_path)
    t0 = time.perf_counter()
    frame, streamed = _load_data(party, job, None, with_label=True)
    t1 = time.perf_counter()
    aligned = streamed.aligned(frame, rows, COLUMNS) if streamed else frame.iloc[rows].reset_index(drop=True)
    train = np.arange(0, len(rows), 5)
    _, matrix, _ = prepare_features(aligned, COLUMNS, train, job.options, intercept=True)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((streamed is not None, t1 - t0, t2 - t1, peak, matrix))


def make_party(tmp: Path, n: int, fmt: str) -> tuple[Path, Path]:
    """A guest workspace (and a job file) whose data file has ``n`` rows x 20 columns."""
    from vfl.cli.workspace import DataSpec, create_workspace
    from vfl.config import Federation, JobConfig

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"id": [f"customer-{i:09d}" for i in range(n)], "y": rng.integers(0, 2, n)})
    for name in COLUMNS:
        frame[name] = rng.normal(size=n)
    data = tmp / f"guest.{fmt}"
    frame.to_parquet(data, index=False, row_group_size=262_144) if fmt == "parquet" else frame.to_csv(
        data, index=False
    )
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
    job.write_text(JobConfig(id="bench", kind="train", train={"key_bits": 1024}).to_toml())
    return tmp / "guest", job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument("--batch-rows", type=int, default=262_144)
    parser.add_argument("--shared", type=float, default=0.5, help="fraction of the rows in the intersection")
    args = parser.parse_args()
    print(
        f"bench_stream_load: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    context = mp.get_context("spawn")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workspace, job = make_party(Path(tmp), args.rows, args.format)
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
        f"\nguest training party, {args.rows:,} rows x 20 columns ({args.format}, {size / 2**20:.0f} MB), "
        f"{int(args.rows * args.shared):,} shared rows, batches of {args.batch_rows:,} rows"
    )
    print(f"{'path':<26} | {'load+check s':>12} | {'align+prepare s':>15} | {'peak MB':>7} | {'ratio':>5}")
    print("-" * 78)
    for streamed, load, prep, peak, _ in results:
        name = "streamed (take_rows)" if streamed else "in memory (load_table)"
        print(f"{name:<26} | {load:12.1f} | {prep:15.1f} | {peak:7.0f} | {peak / base[3]:4.2f}x")
    diff = float(np.max(np.abs(results[0][4] - results[1][4])))
    print(
        f"peak MB = max resident memory of the party's process; model matrices differ by at most {diff:.1e}"
    )
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)


if __name__ == "__main__":
    main()
