"""The ``segment`` job end to end against an encrypted cross-tab of the same size, same run.

    python benchmarks/bench_segment.py [--rows 25000 100000] [--k 8] [--key-bits 2048] [--workers 1]
    python benchmarks/bench_segment.py --rows 1000000      # the issue's size (~15+ min, several GB)

Two parties (``vfl.segmentation.synthetic.marketing_like``: a retailer and a bank, 8 columns each),
K segments, ``k_p`` from the default rule. Each measurement runs in its own child process (so its
peak resident memory is its own), with both parties as threads over the in-process network (every
message through Arrow IPC, as between machines):

* **segment**: the whole job (agreement, PSI, local k-means, encrypted grid counts with two noise
  shares, geometry, grid k-means, result, barrier);
* **local k-means s**: the two parties' local k-means alone (measured again after the job), the
  part of the job's time that is plain scikit-learn;
* **cross-tab** (the baseline): agreement, PSI and one encrypted cross-tab round of the same
  ``k_g x k_h`` cells over the same rows (random cell codes), nothing else.

Printed: wall seconds and peak RSS of each, their ratio, and the segmentation's objective ratio and
ARI against centralized KMeans on the joined standardized columns (measured where all columns are
available: the benchmark holds both parties' data).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from _segment import print_header, segment_parser


def _frames(n: int, seed: int) -> tuple[list[pd.DataFrame], list[np.ndarray]]:
    from vfl.segmentation.synthetic import marketing_like

    data = marketing_like(n, seed=seed, columns=8)
    frames = []
    for p, part in enumerate(data.parts):
        f = pd.DataFrame(part, columns=[f"p{p}_{j}" for j in range(part.shape[1])])
        f.insert(0, "id", np.arange(n))
        frames.append(f)
    return frames, data.parts


def child(mode: str, n: int, k: int, key_bits: int, workers: int, seed: int) -> dict:
    from threadpoolctl import threadpool_limits

    from vfl.crypto import WorkerPool, generate_keypair
    from vfl.transport import channel

    # one 1M-row message (the encrypted rows) takes longer than the default 600 s wait on a loaded machine
    channel.DEFAULT_TIMEOUT = 7200.0

    frames, parts = _frames(n, seed)
    keypair = generate_keypair(key_bits)
    out: dict = {"mode": mode, "rows": n}
    with threadpool_limits(limits=1):
        start = time.perf_counter()
        if mode == "segment":
            from vfl.parties.segment import simulate_segment
            from vfl.segmentation.options import SegmentOptions

            sim = simulate_segment(
                frames[0], frames[1], id="id", k=k, key_bits=key_bits, keypairs=[keypair], workers=workers
            )
            out["seconds"] = time.perf_counter() - start
            from vfl.segmentation.local import standardize
            from vfl.segmentation.quality import centralized_kmeans, compare, joined

            labels = sim.guest.result.lookup[sim.guest.local.labels, sim.hosts["host1"].local.labels]
            x = joined([standardize(p)[0] for p in parts])[sim.guest.ids]
            q = compare(x, labels, centralized_kmeans(x, k, seed=0))
            out.update(ratio=q.ratio, ari=q.ari, k_g=sim.guest.local.k, k_h=sim.hosts["host1"].local.k)
            # the local k-means alone (both parties, one after the other), to split the job's time
            from vfl.parties.segment import local_k
            from vfl.segmentation.local import cluster_locally

            kp = local_k(SegmentOptions(k=k), 2, n)
            start = time.perf_counter()
            for p in parts:
                cluster_locally(p, kp, seed=0)
            out["local_seconds"] = time.perf_counter() - start
        else:
            from vfl.parties.common import Job
            from vfl.parties.segment import local_k
            from vfl.parties.simulation import run_parties
            from vfl.protocols import psi
            from vfl.protocols.segment import crosstab_guest, crosstab_host, crosstab_options
            from vfl.segmentation.options import SegmentOptions
            from vfl.transport.local import LocalNetwork

            kp = local_k(SegmentOptions(k=k), 2, n)
            job = Job(
                "xt", "guest", ("host1",), kind="segment", segment=SegmentOptions(k=k, key_bits=key_bits)
            )
            network = LocalNetwork(list(job.parties))
            rng = np.random.default_rng(seed)
            opts = crosstab_options("guest", "host1", epsilon=1.0, k=20, cells=1 << 16, outcome=False)

            def guest() -> object:
                s = job.session(network.channel("guest"))
                s.agree(job.settings())
                r = psi.run_guest(s, frames[0]["id"], ["host1"], job.psi)
                pk = s.receive_key("host1")
                return crosstab_guest(
                    s, "host1", rng.integers(0, kp, r.size), opts, pk, step="counts", workers=pool
                )

            def host() -> object:
                s = job.session(network.channel("host1"))
                s.agree(job.settings())
                r = psi.run_host(s, frames[1]["id"], "guest", job.psi)
                s.hand_out_key(keypair[0], ["guest"])
                codes = np.random.default_rng(seed + 1).integers(0, kp, r.size)
                return crosstab_host(s, "guest", codes, kp, opts, keypair, kp, step="counts", workers=pool)

            with WorkerPool(workers) as pool:
                run_parties(network, {"guest": guest, "host1": host})
            out["seconds"] = time.perf_counter() - start
            out.update(k_g=kp, k_h=kp)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a benchmark child failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = segment_parser(__doc__, [25_000, 100_000])
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--parallel", action="store_true",
        help="run the cross-tab and the segment job at the same time (same load for both; twice the memory)",
    )  # fmt: skip
    ap.add_argument("--child", nargs=2, metavar=("MODE", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, rows = args.child
        print(json.dumps(child(mode, int(rows), args.k, args.key_bits, args.workers, args.seed)))
        return
    print_header(
        f"segment job vs encrypted cross-tab of the same size: 2 parties x 8 columns, K={args.k}, "
        f"{args.key_bits}-bit, {args.workers} crypto worker(s)",
        f"{'rows':>8} {'k_g x k_h':>9} {'cross-tab s':>11} {'segment s':>10} {'time ratio':>10} "
        f"{'local k-means s':>15} {'xt MB':>7} {'seg MB':>7} {'mem ratio':>9} {'objective':>9} {'ARI':>6} "
        f"{'load':>5}",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    for n in args.rows:
        res, procs = {}, {}
        for mode in ("crosstab", "segment"):
            cmd = [sys.executable, __file__, "--child", mode, str(n), "--k", str(args.k),
                   "--key-bits", str(args.key_bits), "--workers", str(args.workers), "--seed", str(args.seed)]  # fmt: skip
            procs[mode] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
            if not args.parallel:
                res[mode] = _result(procs[mode])
        for mode, proc in procs.items():
            if mode not in res:  # (setdefault would read a finished child's closed pipe again)
                res[mode] = _result(proc)
        xt, seg = res["crosstab"], res["segment"]
        print(
            f"{n:>8} {str(seg['k_g']) + 'x' + str(seg['k_h']):>9} {xt['seconds']:>11.1f} {seg['seconds']:>10.1f} "
            f"{seg['seconds'] / xt['seconds']:>10.2f} {seg['local_seconds']:>15.1f} {xt['peak_mb']:>7.0f} {seg['peak_mb']:>7.0f} "
            f"{seg['peak_mb'] / xt['peak_mb']:>9.2f} {seg['ratio']:>9.3f} {seg['ari']:>6.3f} "
            f"{os.getloadavg()[0]:>5.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
