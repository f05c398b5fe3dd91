"""Benchmark: one party's heavy work on a Dask cluster against the local process pool (issue 17).

Four parts, each measured against its baseline in the same run on the same machine:

1. **kernels** (2048-bit key): throughput of DJN encryption and of ``X^T [[d]]`` (bucket
   multi-exponentiation, 20 columns) per core, through the engine's own entry points
   (``encrypt(pk, x, workers=B)``, ``EncryptedVector.rdot(..., workers=B)``) on the local pool of
   2 processes and on a ``distributed.LocalCluster`` of 2 single-thread workers; and the same chunk
   functions on 1 vs 2 Dask workers (``map_chunks`` with 8 chunks), for how time scales with workers.
   Rounds are interleaved so that load from other users of the machine hits every backend alike; the
   median round is shown.
2. **psi**: guest and host in separate processes (a loopback pipe carries the Arrow messages), each
   reading its ids from its own Parquet file in batches (``vfl.streaming.read_ids``), 50 % overlap;
   wall time, time per id and peak resident memory of each party's main process and of its workers.
   (Streamed preprocessing, through a real job's load/check/prepare steps: ``bench_stream_load.py``.)
3. **epoch**: one training epoch at 2048 bits, 10 + 10 columns, default options, guest, host and
   arbiter in three real processes (``run_party`` over Flight + TLS on loopback, ``_epoch.py``), the
   data Parquet files streamed: wall time, CPU seconds and peak memory per party at each ``--rows``
   size, fitted linearly and extrapolated to 1M rows, and the first size with 1 worker per party.

    python benchmarks/bench_scale.py                  # everything (PSI at 1M x 1M)
    python benchmarks/bench_scale.py --quick          # small sizes, ~3 min
    python benchmarks/bench_scale.py --parts kernels --rounds 5
    python benchmarks/bench_scale.py --parts epoch --rows 100000,200000   # 1M: --rows 1000000 (~20 CPU-min)

Target: Dask per-core throughput >= 0.9x the local pool's (little overhead).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vfl.compute import DaskBackend  # noqa: E402
from vfl.crypto import (  # noqa: E402
    WorkerPool,
    _kernels,  # noqa: E402
    encrypt,
    generate_keypair,
    prepare_matrix,
)


def _cluster(workers: int) -> Any:
    import logging

    from distributed import LocalCluster

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)

    return LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
    )


def _dask(cluster: Any, workers: int) -> DaskBackend:
    backend = DaskBackend(cluster.scheduler_address)
    backend.client.wait_for_workers(workers, timeout=60)
    backend.workers = workers
    return backend


def _header(text: str) -> None:
    """A table's header line and the rule under it."""
    print(text)
    print("-" * len(text))


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- 1. kernels -----------------------------------------------------------------------------------


def _backend_pids(backend: Any) -> list[int]:
    """The processes doing a backend's work besides this one: pool workers, or Dask workers and their nannies.

    A ``LocalCluster``'s nannies run in this process (the workers' parent), which ``_cpu`` counts once.
    """
    import psutil

    if isinstance(backend, DaskBackend):
        workers = list(backend.client.run(os.getpid).values())
        return sorted(set(workers + [psutil.Process(p).ppid() for p in workers]) - {os.getpid()})
    return backend.pids()


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by this process (client, LocalCluster scheduler) and ``pids``."""
    import psutil

    total = sum(os.times()[:2])
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def _measure(backend: Any, fn: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every process involved) of ``fn()``."""
    pids = _backend_pids(backend)
    c0, t0 = _cpu(pids), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu(pids) - c0


def bench_kernels(args: argparse.Namespace) -> None:
    pk, _ = generate_keypair(2048)
    rng = np.random.default_rng(0)
    n_enc, m, k = args.enc, args.rdot_rows, 20
    values = rng.normal(size=n_enc)
    prepared = prepare_matrix(rng.normal(size=(m, k)))
    d = encrypt(pk, rng.normal(size=m))
    plains = [_kernels.mpz(i + 1) for i in range(n_enc)]
    enc_args = (pk.n, pk.h_s, pk.djn_exponent_bits, pk.djn_window)
    digits, _ = prepared.select(None)
    groups = np.array_split(np.arange(k), 8)
    cts = list(d.ciphertexts)

    def chunked(backend: Any) -> list[tuple[float, float]]:
        def rdot() -> None:
            futures = [
                backend.submit(_kernels.bucket_multiexp, cts, digits[g], prepared.window, pk.n_square)
                for g in groups
            ]
            [f.result() for f in futures]

        return [
            _measure(
                backend, lambda: backend.map_chunks(_kernels.worker_encrypt, plains, enc_args, chunks=8)
            ),
            _measure(backend, rdot),
        ]

    local = WorkerPool(2)
    c2 = _cluster(2)
    dask2 = _dask(c2, 2)
    for b in (local, dask2):
        b.warm_up(pk)
    backends = {"local pool": local, "dask": dask2}
    idle = {name: _measure(b, lambda: time.sleep(2.0)) for name, b in backends.items()}
    background = {name: cpu / wall for name, (wall, cpu) in idle.items()}  # heartbeats, nannies: CPU-s per s
    engine: dict[str, list[list[tuple[float, float]]]] = {name: [] for name in backends}
    for r in range(args.rounds):
        for name, b in backends.items():
            engine[name].append(
                [
                    _measure(b, lambda b=b: encrypt(pk, values, workers=b)),
                    _measure(b, lambda b=b: d.rdot(prepared, workers=b)),
                ]
            )
        print(f"  kernels round {r + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})", flush=True)
    local.close()
    # 1 vs 2 workers after the engine rounds: the other cluster's scheduler and nannies live in this
    # process, whose CPU every measurement counts, so it is not running while local and Dask are compared
    c1 = _cluster(1)
    dask1 = _dask(c1, 1)
    dask1.warm_up(pk)
    scale: dict[str, list[list[tuple[float, float]]]] = {"dask, 1 worker": [], "dask, 2 workers": []}
    for r in range(args.rounds):
        scale["dask, 1 worker"].append(chunked(dask1))
        scale["dask, 2 workers"].append(chunked(dask2))
        print(
            f"  1 vs 2 workers round {r + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})", flush=True
        )
    for b in (dask2, dask1):
        b.close()
    c2.close()
    c1.close()

    def med(runs: list[list[tuple[float, float]]], op: int, what: int) -> float:
        return statistics.median(run[op][what] for run in runs)

    terms = m * k
    work = (n_enc, terms)
    print(f"\n1. kernels, 2048-bit key: encryption of {n_enc:,} values, X^T[[d]] of {m:,} rows x {k} columns")
    _header(
        f"{'backend':<11} | {'cores':>5} | {'enc/s/core':>10} | {'ratio':>5} | {'enc/CPU-s':>9} | {'ratio':>5} | "
        f"{'terms/s/core':>12} | {'ratio':>5} | {'terms/CPU-s':>11} | {'ratio':>5}"
    )
    base = {(op, w): work[op] / med(engine["local pool"], op, w) for op in (0, 1) for w in (0, 1)}
    for name, runs in engine.items():
        cells = []
        for op in (0, 1):
            wall = work[op] / med(runs, op, 0)
            cpu = work[op] / med(runs, op, 1)
            width = 10 if op == 0 else 12
            cells.append(f"{wall / 2:{width},.0f} | {wall / base[op, 0]:4.2f}x")
            cells.append(f"{cpu:{9 if op == 0 else 11},.0f} | {cpu / base[op, 1]:4.2f}x")
        print(f"{name:<11} | {2:>5} | " + " | ".join(cells))
    print(
        "per core = throughput (wall clock) / 2 cores; per CPU-s = work / CPU seconds of every process involved\n"
        "(this one, pool workers, Dask workers and nannies; the LocalCluster scheduler runs in this process), which\n"
        "other users of the machine do not distort. ratio = / the local pool's (target >= 0.9x)"
    )
    net = {
        name: [work[op] / max(1e-9, med(runs, op, 1) - background[name] * med(runs, op, 0)) for op in (0, 1)]
        for name, runs in engine.items()
    }
    print(
        "net of idle background (CPU-s per s measured idle: "
        + ", ".join(f"{name} {rate:.3f}" for name, rate in background.items())
        + "): dask/local per CPU-s "
        + ", ".join(
            f"{what} {net['dask'][op] / net['local pool'][op]:.2f}x"
            for op, what in ((0, "enc"), (1, "terms"))
        )
        + "\n"
    )
    _header(
        f"{'chunk functions':<16} | {'cores':>5} | {'enc s':>6} | {'speed-up':>8} | {'enc CPU-s':>9} | "
        f"{'rdot s':>6} | {'speed-up':>8} | {'rdot CPU-s':>10}"
    )
    one = scale["dask, 1 worker"]
    for name, runs in scale.items():
        cores = 1 if "1 worker" in name else 2
        print(
            f"{name:<16} | {cores:>5} | {med(runs, 0, 0):6.2f} | {med(one, 0, 0) / med(runs, 0, 0):7.2f}x | "
            f"{med(runs, 0, 1):9.2f} | {med(runs, 1, 0):6.2f} | {med(one, 1, 0) / med(runs, 1, 0):7.2f}x | "
            f"{med(runs, 1, 1):10.2f}"
        )
    print(
        "speed-up = wall time on 1 Dask worker / on 2 (ideal 2.00x on an idle machine); CPU-s = the total work, which\n"
        "stays flat when splitting costs nothing: time with N workers ~ CPU-s / N on N free cores"
    )


# --- 2. PSI ---------------------------------------------------------------------------------------


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_probe(_: Any = None) -> tuple[float, float]:
    """(peak resident MB, CPU seconds) of the process it runs in (a pool or Dask worker)."""
    time.sleep(0.2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def psi_party(role: str, paths: dict[str, str], backend_kind: str, conn: Any, barrier: Any, out: Any) -> None:
    from bench_psi import PipeChannel

    from vfl.protocols.psi import run_guest, run_host
    from vfl.psi import PsiOptions, ScalarMultiplier
    from vfl.streaming import read_ids

    peer = "host" if role == "guest" else "guest"
    channel = PipeChannel(role, peer, conn)
    options = PsiOptions(timeout=3600)
    cluster = pool = None
    if backend_kind == "dask":  # each party its own cluster of one worker: 2 cores for 2 parties
        cluster = _cluster(1)
        backend: Any = _dask(cluster, 1)
        executor: Any = backend
    else:
        from concurrent.futures import ProcessPoolExecutor

        from vfl.crypto.pool import watch_parent

        context = mp.get_context("forkserver")
        pool = ProcessPoolExecutor(1, mp_context=context, initializer=watch_parent, initargs=(os.getpid(),))
        list(pool.map(_rss_probe, range(1)))  # start the worker before the clock starts
        executor = pool
    multiplier = ScalarMultiplier(workers=1, chunk_size=options.chunk_size, executor=executor)
    barrier.wait()
    t0 = time.perf_counter()
    ids = read_ids(paths[role], "id")["id"]
    t_read = time.perf_counter() - t0
    if role == "guest":
        result = run_guest(channel, ids, ["host"], options, multiplier=multiplier)
    else:
        result = run_host(channel, ids, "guest", options, multiplier=multiplier)
    elapsed = time.perf_counter() - t0
    cpu = sum(os.times()[:2])
    if cluster is not None:
        probes = list(backend.client.run(_rss_probe).values())
        backend.close()
        cluster.close()
    else:
        probes = list(pool.map(_rss_probe, range(1)))  # the one worker
        pool.shutdown()
    wrss = max(p[0] for p in probes)
    cpu += sum(p[1] for p in probes)
    out.put((role, elapsed, t_read, result.size, _maxrss_mb(), wrss, cpu))


def run_psi(n: int, backend_kind: str, folder: Path) -> dict[str, Any]:
    paths = {}
    for role, start in (("guest", 0), ("host", n // 2)):
        path = folder / f"{role}-{n}.parquet"
        if not path.exists():
            ids = pd.Series([f"customer-{i:09d}@example.com" for i in range(start, start + n)])
            pd.DataFrame({"id": ids}).to_parquet(path, index=False, row_group_size=262_144)
        paths[role] = str(path)
    from _common import run_two_parties

    reports = run_two_parties(psi_party, (paths, backend_kind), timeout=7200.0)
    size = reports["guest"][2]
    assert size == n // 2, f"PSI found {size} shared ids, expected {n // 2}"
    return {"n": n, "backend": backend_kind, "wall": max(r[0] for r in reports.values()), "reports": reports}


def bench_psi(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.psi_sizes:
            for kind in args.psi_backends:
                run = run_psi(n, kind, Path(tmp))
                print(f"  psi {n:,} x {n:,} on {kind}: {run['wall']:.1f} s", flush=True)
                rows.append(run)
    print(
        "\n2. PSI, ids streamed from Parquet, guest and host in separate processes (1 core each), 50 % overlap"
    )
    _header(
        f"{'n x n':>21} | {'backend':<7} | {'wall s':>7} | {'us/id':>6} | {'read s':>6} | "
        f"{'peak MB guest':>13} | {'peak MB host':>12} | {'worker MB':>9} | {'CPU us/id':>9}"
    )
    for run in rows:
        g, h = run["reports"]["guest"], run["reports"]["host"]
        size = f"{run['n']:,} x {run['n']:,}"
        print(
            f"{size:>21} | {run['backend']:<7} | {run['wall']:7.1f} | "
            f"{run['wall'] / run['n'] * 1e6:6.1f} | {max(g[1], h[1]):6.2f} | {g[3]:13.0f} | {h[3]:12.0f} | "
            f"{max(g[4], h[4]):9.0f} | {max(g[5], h[5]) / run['n'] * 1e6:9.1f}"
        )
    print(
        "us/id = wall time / ids per party; peak MB = max resident memory of the party's main process;\n"
        "CPU us/id = CPU seconds of the busier party (its process and its worker) / ids: what load does not distort"
    )


# --- 3. one epoch -----------------------------------------------------------------------------------


def _epoch_line(r: dict[str, Any]) -> str:
    """One row of the epoch table."""
    cpu, pm = sum(r["cpu"].values()), r["party_mb"]
    return (
        f"{r['rows']:>9,} | {r['workers']:>7} | {r['epoch']:7.1f} | {r['cpu']['guest']:11.1f} | "
        f"{r['cpu']['host']:7.1f} | {r['cpu']['arbiter']:7.1f} | {cpu / r['rows'] * 1e3:10.3f} | "
        f"{pm['guest']:13.0f} | {pm['host']:5.0f} | {pm['arbiter']:7.0f} | {max(r['worker_mb'].values()):9.0f} | "
        f"{r['setup']:7.1f} | {r['load']:4.1f}"
    )


def bench_epoch(args: argparse.Namespace) -> None:
    from _epoch import linear_fit, run_epoch

    plan = [(n, args.epoch_workers[0]) for n in args.rows]
    plan += [(args.rows[0], w) for w in args.epoch_workers[1:]]
    runs = []
    with tempfile.TemporaryDirectory(prefix="vfl-epoch-") as tmp:
        for i, (n, w) in enumerate(plan):
            print(
                f"  epoch of {n:,} rows, {w} worker(s) per party: started, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            run = run_epoch(Path(tmp) / f"run{i}", n, w, args.key_bits)
            print(f"  ... {_epoch_line(run)} (job {run['wall']:.0f} s)", flush=True)
            runs.append(run)
    print(
        f"\n3. one training epoch, {args.key_bits}-bit key, 10 + 10 columns, defaults (batches of 512, 20 % held out),"
        "\n   guest, host and arbiter in 3 processes over Flight + TLS, Parquet input streamed"
    )
    _header(
        f"{'rows':>9} | {'workers':>7} | {'epoch s':>7} | {'CPU-s guest':>11} | {'host':>7} | {'arbiter':>7} | "
        f"{'CPU ms/row':>10} | {'peak MB guest':>13} | {'host':>5} | {'arbiter':>7} | {'worker MB':>9} | "
        f"{'setup s':>7} | {'load':>4}"
    )
    for r in runs:
        print(_epoch_line(r))
    print(
        "epoch s = wall time at the guest from the end of the PSI to the end of training (1 pass; reading and\n"
        "standardizing the aligned rows included); CPU-s = that window's CPU seconds of each party's process\n"
        "tree (party + pool workers); peak MB = the party process's VmHWM over the whole job (worker MB: its\n"
        "largest pool worker); setup = start to end of the PSI (keys, PSI); load = 1-min load average at the end"
    )
    first = [r for r in runs if r["workers"] == args.epoch_workers[0]]
    if len(first) >= 2:
        xs = [r["rows"] for r in first]
        for what, key in (("epoch wall s", "epoch"), ("CPU-s, 3 parties", None)):
            ys = [r[key] if key else sum(r["cpu"].values()) for r in first]
            a, b = linear_fit(xs, ys)
            print(
                f"linear fit of {what}: {a:,.1f} + {b * 1e3:.3f} ms x rows -> 1,000,000 rows: "
                f"{(a + b * 1e6) / 60:,.1f} min ({', '.join(f'{y / x * 1e3:.3f}' for x, y in zip(xs, ys, strict=True))} ms/row)"
            )
        peak = {p: linear_fit(xs, [r["party_mb"][p] for r in first]) for p in ("guest", "host")}
        print(
            "peak MB at 1M rows (linear): "
            + ", ".join(f"{p} {a + b * 1e6:,.0f}" for p, (a, b) in peak.items())
        )
    by_workers = {r["workers"]: r for r in runs if r["rows"] == args.rows[0]}
    if len(by_workers) > 1:
        one = by_workers.get(1)
        print(
            f"{args.rows[0]:,} rows: "
            + ", ".join(
                f"{w} worker(s) {r['epoch']:.1f} s, {sum(r['cpu'].values()):.1f} CPU-s"
                + (f" ({one['epoch'] / r['epoch']:.2f}x)" if one and w != 1 else "")
                for w, r in sorted(by_workers.items())
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (~3 min)")
    parser.add_argument(
        "--parts", nargs="+", default=["kernels", "psi", "epoch"], choices=["kernels", "psi", "epoch"],
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the kernel part")
    parser.add_argument("--enc", type=int, default=4000, help="values encrypted per round")
    parser.add_argument("--rdot-rows", type=int, default=2048, help="rows of X^T[[d]] per round")
    parser.add_argument("--psi-sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--psi-backends", nargs="+", default=["local", "dask"], choices=["local", "dask"])
    parser.add_argument(
        "--rows", type=lambda t: [int(v) for v in t.split(",")], default=[100_000, 200_000],
        help="rows of the epoch part, comma-separated (e.g. 1000000 on an idle machine)",
    )  # fmt: skip
    parser.add_argument(
        "--epoch-workers", type=lambda t: [int(v) for v in t.split(",")], default=[2, 1],
        help="pool workers per party: every size with the first, the first size with the others",
    )  # fmt: skip
    parser.add_argument("--key-bits", type=int, default=2048, help="key of the epoch part")
    args = parser.parse_args()
    if args.quick:
        args.enc, args.rdot_rows, args.rounds = 1000, 1024, 2
        args.psi_sizes, args.rows = [100_000], [5_000, 10_000]
    print(f"bench_scale: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    if "kernels" in args.parts:
        bench_kernels(args)
    if "psi" in args.parts:
        bench_psi(args)
    if "epoch" in args.parts:
        bench_epoch(args)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end", flush=True)


if __name__ == "__main__":
    main()
