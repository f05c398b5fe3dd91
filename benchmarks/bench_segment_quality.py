"""Quality of the ``segment`` job per data set, through the real protocol (in-process network).

    python benchmarks/bench_segment_quality.py [--rows 5000] [--epsilon 1] [--seeds 0 1]

For every data set: the job runs with its default options (``K`` as listed, ``epsilon`` per host),
and every shared customer's segment is read from the guest's lookup table and every party's local
cluster of that customer (possible here because the benchmark holds all parties' data). The reference
is centralized scikit-learn KMeans (n_init 10) on the joined columns, each standardized and clipped
at 5 standard deviations as the parties do; printed: the k-means objective ratio (job / centralized)
and the adjusted Rand index. Key size does not change the result (1024-bit keys, for speed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from vfl.crypto import generate_keypair
from vfl.parties.segment import simulate_segment
from vfl.segmentation.joint import CLIP_SIGMA
from vfl.segmentation.quality import centralized_kmeans, compare
from vfl.segmentation.synthetic import marketing_like, vertical_blobs


def _frames(parts: list[np.ndarray]) -> list[pd.DataFrame]:
    out = []
    for p, part in enumerate(parts):
        f = pd.DataFrame(part, columns=[f"p{p}_{j}" for j in range(part.shape[1])])
        f.insert(0, "id", np.arange(part.shape[0]))
        out.append(f)
    return out


def _marketing(n: int, seed: int) -> list[pd.DataFrame]:
    from vfl.datasets.marketing import marketing

    t = marketing(n, seed)
    return [
        t["retailer"][["id", "spend", "visits"]],
        t["bank"][["id", "products_held", "balance"]],
        t["publisher"][["id", "page_visits"]],
    ]


def _clipped(frame: pd.DataFrame) -> np.ndarray:
    x = frame.drop(columns="id").to_numpy(dtype=float)
    std = x.std(axis=0)
    return np.clip((x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0), -CLIP_SIGMA, CLIP_SIGMA)


def measure(
    frames: list[pd.DataFrame], k: int, epsilon: float, seed: int, keys
) -> tuple[float, float, float]:
    start = time.perf_counter()
    sim = simulate_segment(frames[0], frames[1:], id="id", k=k, epsilon=epsilon, key_bits=1024,
                           keypairs=keys[: len(frames) - 1], seed=seed)  # fmt: skip
    seconds = time.perf_counter() - start
    hosts = list(sim.hosts.values())
    labels = sim.guest.result.lookup[tuple([sim.guest.local.labels, *(h.local.labels for h in hosts)])]
    ids = sim.guest.ids
    parts = [_clipped(f.set_index("id").loc[ids].reset_index()) for f in frames]
    x = np.hstack(parts)
    q = compare(x, labels, centralized_kmeans(x, k, seed=seed))
    return q.ratio, q.ari, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    keys = [generate_keypair(1024) for _ in range(2)]
    n = args.rows
    sets = {
        "blobs 2 parties x 3 cols, 6 centres, K=6": (lambda s: _frames(vertical_blobs(n, [3, 3], 6, seed=s).parts), 6),
        "blobs 3 parties x 2 cols, 6 centres, K=6": (
            lambda s: _frames(vertical_blobs(n, [2, 2, 2], 6, seed=s).parts), 6),
        "marketing_like 2 parties x 8 cols, K=8": (lambda s: _frames(marketing_like(n, seed=s).parts), 8),
        "vfl.datasets.marketing 3 parties (2+2+1 numeric), K=6": (lambda s: _marketing(n, s), 6),
        "vfl.datasets.marketing retailer+bank, K=4": (lambda s: _marketing(n, s)[:2], 4),
    }  # fmt: skip
    print(f"segment job quality vs centralized KMeans, {n} rows per party, epsilon={args.epsilon} per host")
    header = f"{'data set':<56} {'seed':>4} {'shared':>7} {'objective ratio':>15} {'ARI':>6} {'s':>6}"
    print(header)
    print("-" * len(header))
    with threadpool_limits(limits=1):
        for name, (make, k) in sets.items():
            for seed in args.seeds:
                frames = make(seed)
                ratio, ari, seconds = measure(frames, k, args.epsilon, seed, keys)
                shared = len(set.intersection(*(set(f["id"]) for f in frames)))
                print(
                    f"{name:<56} {seed:>4} {shared:>7} {ratio:>15.3f} {ari:>6.3f} {seconds:>6.1f}", flush=True
                )


if __name__ == "__main__":
    main()
