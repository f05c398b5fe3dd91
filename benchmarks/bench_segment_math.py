"""Joint segmentation math (grid k-means) against centralized k-means, same run, same data.

    python benchmarks/bench_segment_math.py [--rows 100000 1000000] [--k 8] [--epsilon 1] [--threads 1]

For every size: two parties with 8 columns each (``vfl.segmentation.synthetic.marketing_like``: a
retailer and a bank whose columns share personas and an affluence factor, skewed and binary columns),
K joint segments, ``k_p`` from ``default_local_k``. Measured in ONE process (the machine is shared, so
only same-run ratios mean anything), with ``--threads`` BLAS/OpenMP threads:

* **local k-means** per party: standardize + scikit-learn KMeans (n_init 3) on that party's columns;
* **grid k-means**: the weighted k-means over the noised cross-tab cells (two-sided geometric noise,
  ``epsilon`` per count, cells at or below the noise threshold ``3 / epsilon`` dropped), n_init 10,
  plus the lookup of every row's segment;
* **centralized**: scikit-learn KMeans (n_init 10) on the joined standardized columns, the baseline;
* objective ratio (grid / centralized k-means objective of the assignment on the joined data) and
  the adjusted Rand index against the centralized labels.

The cross-tab itself (an encrypted protocol) is not timed here; its plaintext reference is.
"""

from __future__ import annotations

import time

import numpy as np
from _segment import print_header, segment_parser
from threadpoolctl import threadpool_limits

from vfl.segmentation.grid import cross_tab, fit_grid
from vfl.segmentation.local import cluster_locally, default_local_k, standardize
from vfl.segmentation.quality import centralized_kmeans, compare, joined
from vfl.segmentation.synthetic import marketing_like, two_sided_geometric


def run(n: int, k: int, epsilon: float, seed: int) -> dict[str, float]:
    data = marketing_like(n, seed=seed, columns=8)
    kp = default_local_k(k, len(data.parts), n)
    row: dict[str, float] = {"rows": n, "k_p": kp}
    locs = []
    for p, part in enumerate(data.parts):
        start = time.perf_counter()
        locs.append(cluster_locally(part, kp, seed=seed, party=f"party {p}"))
        row[f"local_{p}"] = time.perf_counter() - start
    labels = [loc.labels for loc in locs]
    counts = cross_tab(labels, [loc.k for loc in locs])
    noised = counts + two_sided_geometric(counts.shape, epsilon, np.random.default_rng(seed + 1))
    start = time.perf_counter()
    grid = fit_grid([loc.centroids for loc in locs], noised, k, epsilon=epsilon, seed=seed)
    segments = grid.assign(labels)
    row["grid"] = time.perf_counter() - start
    x = joined([standardize(part)[0] for part in data.parts])
    ref = centralized_kmeans(x, k, seed=seed)
    row["central"] = ref.seconds
    q = compare(x, segments, ref)
    row["ratio"], row["ari"] = q.ratio, q.ari
    return row


def main() -> None:
    ap = segment_parser(__doc__, [100_000, 1_000_000])
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print_header(
        f"grid k-means vs centralized KMeans: 2 parties x 8 columns, K={args.k}, epsilon={args.epsilon} "
        f"on the grid counts, {args.threads} thread(s)",
        f"{'rows':>9} {'k_p':>4} {'local p0 s':>10} {'local p1 s':>10} {'grid s':>8} {'central s':>10} "
        f"{'objective ratio':>15} {'ARI':>6}",
    )
    with threadpool_limits(limits=args.threads):
        for n in args.rows:
            r = run(n, args.k, args.epsilon, args.seed)
            print(
                f"{int(r['rows']):>9} {int(r['k_p']):>4} {r['local_0']:>10.2f} {r['local_1']:>10.2f} "
                f"{r['grid']:>8.3f} {r['central']:>10.2f} {r['ratio']:>15.4f} {r['ari']:>6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
