"""The price of an exact grid for 2+ hosts (DESIGN.md §14) against the 1-host cross-tab, same run.

    python benchmarks/bench_segment_grid.py [--rows 4000] [--k-g 32] [--key-bits 2048]

The pairwise cross-tab (``protocols/crosstab.py``, what the segment job runs per host) costs per row
one encryption at the host (CRT randomness) and one ciphertext multiplication at the guest (the fold by
its local cluster). The cheapest exact count of every (guest, host 1, host 2) combination we found, the
chained fold, costs per row: host 1's encryption; at the guest, ``k_g`` rerandomized ciphertexts (the
row's ciphertext in its own cluster's column, a fresh encryption of 0 in the others, so that host 2
cannot tell them apart; the guest has only the public key, so fixed-base randomizers -- or host 1
computes them with its CRT tables and hands them over, ``k_g`` more ciphertexts per row); at host 2,
``k_g`` multiplications (the fold of every column by its own cluster); ``k_g`` ciphertexts per row
cross from the guest to host 2. Measured here: each primitive on real ciphertexts of one key, in one
process (the machine is shared, so only same-run ratios mean anything), and the per-row cost and
traffic of both designs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gmpy2  # noqa: E402
import numpy as np  # noqa: E402


def per_row_costs(n: int, k_g: int, key_bits: int) -> dict[str, float]:
    """Seconds per row of each primitive (one key, one process, one thread)."""
    from vfl.analytics import crosstab as ct
    from vfl.crypto import RandomnessPool, generate_keypair
    from vfl.crypto.randomness import randomizers

    pk, sk = generate_keypair(key_bits)
    n2 = pk.n_square
    rng = np.random.default_rng(0)
    plains = [1 << (24 * int(b)) for b in rng.integers(0, 32, n)]
    RandomnessPool(sk).fill(8)  # the fixed-base tables of both paths are built once per key: not timed
    randomizers(pk, 8)
    t = time.perf_counter()
    pool = RandomnessPool(sk)
    pool.fill(n)
    rows = ct.encrypt_rows(pk, plains, randomness=pool)
    out = {"host encryption": (time.perf_counter() - t) / n}
    t = time.perf_counter()
    acc = [1] * k_g
    for c, g in zip(rows, rng.integers(0, k_g, n).tolist(), strict=True):
        acc[g] = acc[g] * c % n2
    out["guest fold"] = (time.perf_counter() - t) / n
    m = max(1, n // k_g)  # rerandomize m rows' worth of k_g columns, scale per row
    t = time.perf_counter()
    rands = randomizers(pk, m * k_g)
    _ = [c * r % n2 for c, r in zip(rows[:m] * k_g, rands, strict=True)]
    out["guest expansion (k_g rerandomized)"] = (time.perf_counter() - t) / m
    t = time.perf_counter()
    for _ in range(k_g):
        for c in rows[:m]:
            acc[0] = acc[0] * c % n2
    out["host 2 fold (k_g multiplications)"] = (time.perf_counter() - t) / m
    # shift packing: host 2 moves the row's one-hot of host 1 into its own block, c^(2^(w k_1 h_2)): the
    # grid k_1 x k_2 must fit one plaintext (slot width w = 24 bits at 1M rows, so k_1 = k_2 = 9 at 2048 bits)
    k_small = int((pk.bits // 24) ** 0.5)
    shifts = [24 * k_small * int(h) for h in rng.integers(0, k_small, m)]
    t = time.perf_counter()
    _ = [gmpy2.powmod(c, 1 << sh, n2) for c, sh in zip(rows[:m], shifts, strict=True)]
    out["host 2 shift (shift packing)"] = (time.perf_counter() - t) / m
    out["k per host (shift packing)"] = k_small
    out["ciphertext bytes"] = 2 * pk.bits / 8
    return out


def grid_quality(
    n: int, k: int, guest_informative: bool, seed: int, epsilon: float = 1.0
) -> dict[str, float]:
    """Objective ratio / ARI against centralized KMeans of the grid k-means on the exact noised grid and on
    the estimate from the noised pairwise tables (3 parties, plaintext: what each design would give)."""
    from vfl.segmentation.grid import NOISE_THRESHOLD, cross_tab, fit_grid
    from vfl.segmentation.joint import pairwise_to_grid
    from vfl.segmentation.local import cluster_locally, default_local_k, standardize
    from vfl.segmentation.quality import centralized_kmeans, compare, joined
    from vfl.segmentation.synthetic import two_sided_geometric, vertical_blobs

    data = vertical_blobs(n, [2, 2, 2], centers=k, cluster_std=1.0, seed=seed)
    rng = np.random.default_rng(seed)
    parts = list(data.parts)
    if not guest_informative:  # the guest's columns say nothing about the clusters the hosts share
        parts[0] = rng.normal(size=parts[0].shape)
    kp = default_local_k(k, 2, n)
    locs = [cluster_locally(p, kp, seed=seed, party=f"party {i}") for i, p in enumerate(parts)]
    labels = [loc.labels for loc in locs]
    cents = [loc.centroids for loc in locs]
    exact = cross_tab(labels, [loc.k for loc in locs])
    exact = exact + two_sided_geometric(exact.shape, epsilon, rng)
    pairs = []
    for h in (1, 2):
        t = cross_tab([labels[0], labels[h]], [locs[0].k, locs[h].k])
        t = t + two_sided_geometric(t.shape, epsilon, rng)
        pairs.append(np.where(t > NOISE_THRESHOLD / epsilon, t, 0.0))
    x = joined([standardize(p)[0] for p in parts])
    ref = centralized_kmeans(x, k, seed=0)
    out = {}
    for name, counts, kw in (("exact", exact, {"epsilon": epsilon}),
                             ("estimate", pairwise_to_grid(pairs), {"min_count": 0.0})):  # fmt: skip
        grid = fit_grid(cents, counts, k, seed=seed, **kw)
        q = compare(x, grid.assign(labels), ref)
        out[f"{name} ratio"], out[f"{name} ari"] = q.ratio, q.ari
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--k-g", type=int, default=32, help="the guest's local clusters (k_p at 100k+ rows)")
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--quality-rows", type=int, default=3000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        c = per_row_costs(args.rows, args.k_g, args.key_bits)
    print(
        f"exact grid (chained fold) vs pairwise cross-tab: {args.rows} rows, k_g={args.k_g}, {args.key_bits}-bit, "
        f"one process, load {os.getloadavg()[0]:.1f}"
    )
    for name, value in c.items():
        if "(shift packing)" in name and name.startswith("k "):
            print(f"  {name:<40} {value:>9d}")
        elif name != "ciphertext bytes":
            print(f"  {name:<40} {value * 1e3:>9.3f} ms / row")
    pair = c["host encryption"] + c["guest fold"]
    exact = (
        c["host encryption"]
        + c["guest expansion (k_g rerandomized)"]
        + c["host 2 fold (k_g multiplications)"]
    )
    # the same with the randomizers computed by host 1 (the key owner, CRT) and handed to the guest
    supplied = c["host encryption"] * (1 + args.k_g) + c["host 2 fold (k_g multiplications)"]
    # shift packing: host 1 encrypts, host 2 shifts and rerandomizes (it relays to the guest), guest folds
    rerand = c["guest expansion (k_g rerandomized)"] / args.k_g
    shift = c["host encryption"] + c["host 2 shift (shift packing)"] + rerand + c["guest fold"]
    two_pairs = 2 * pair
    b = c["ciphertext bytes"]
    header = f"{'design (2 hosts)':<44} {'ms / row':>9} {'x 1-host cross-tab':>19} {'KB / row':>9}"
    print(header)
    print("-" * len(header))
    for name, cost, kb in (
        ("1-host cross-tab (the baseline)", pair, b / 1024),
        ("two pairwise cross-tabs (estimated grid, now)", two_pairs, 2 * b / 1024),
        ("chained fold (exact grid)", exact, (1 + args.k_g) * b / 1024),
        ("chained fold, randomizers from host 1 (CRT)", supplied, (1 + 2 * args.k_g) * b / 1024),
        (f"shift packing (k_h <= {c['k per host (shift packing)']})", shift, 2 * b / 1024),
    ):
        print(f"{name:<44} {cost * 1e3:>9.3f} {cost / pair:>19.1f} {kb:>9.1f}")

    header = f"{'3 parties, K=4, eps=1':<32} {'seed':>4} {'exact ratio':>11} {'ARI':>6} {'estimate ratio':>14} {'ARI':>6}"
    print(f"\nquality of the grid k-means on each grid ({args.quality_rows} rows, blobs 2+2+2 columns)")
    print(header)
    print("-" * len(header))
    for informative in (True, False):
        for seed in args.seeds:
            q = grid_quality(args.quality_rows, 4, informative, seed)
            label = "guest columns informative" if informative else "guest columns pure noise"
            print(
                f"{label:<32} {seed:>4} {q['exact ratio']:>11.3f} {q['exact ari']:>6.3f} "
                f"{q['estimate ratio']:>14.3f} {q['estimate ari']:>6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
