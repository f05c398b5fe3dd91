"""Multi-class at binary cost: one K-class epoch against one binary epoch on the same rows, same run.

    python benchmarks/bench_models.py [--rows 2000] [--classes 4 12] [--key-bits 2048] [--batch 512] [--workers 1]
                                      [--topology coordinated|arbiter-free]

A guest (5 columns + intercept, the label) and one host (10 columns) of ``make_classification`` data,
trained by the real coordinated (or, with ``--topology arbiter-free``, two-key) protocol in this process (``vfl.simulate``: every message through
Arrow IPC, real Paillier). An epoch's time is measured as ``(T(3 epochs) - T(1 epoch)) / 2`` so that
PSI, key generation, the held-out scoring and the setup cancel out. Rows:

* ``binary-lr``: the Taylor-loss protocol (the baseline), labels ``y == 0``;
* ``multiclass-lr`` with K classes (one row per ``--classes`` value): K residuals packed in
  ``G = ceil(K / c)`` ciphertexts per row (``c`` classes each, at most ``(t + 1) / 2`` of the key's ``t``
  slots: 9 for 2048 bits, so the default K = 12 takes two), one multi-exponentiation per party, batch and
  ciphertext group, the loss in one masked slot;
* ``linear`` and ``poisson`` (targets derived from the same rows) for reference.

The ratio column is the median over ``--repeats`` rounds of each row's epoch time over the binary epoch
of the same round (the machine is shared; only same-run ratios mean anything). Target of issue #15: K = 4 at most 1.5x binary.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification

import vfl
from vfl.crypto import generate_keypair
from vfl.options import TrainOptions
from vfl.protocols.lr_multiclass import slot_layout
from vfl.protocols.lr_two_key_multiclass import two_key_groups


def frames(rows: int, classes: int, seed: int = 0):
    x, y = make_classification(
        n_samples=rows, n_features=15, n_informative=8, n_classes=classes, random_state=seed
    )
    ids = np.arange(rows)
    guest = pd.DataFrame(x[:, :5], columns=[f"g{i}" for i in range(5)]).assign(id=ids, y=y)
    host = pd.DataFrame(x[:, 5:], columns=[f"h{i}" for i in range(10)]).assign(id=ids)
    return guest, host


def timed(guest, host, keys, key_bits, workers, epochs, **options) -> float:
    start = time.perf_counter()
    vfl.simulate(
        guest, host, id="id", label="y", key_bits=key_bits, workers=workers, **keys,
        max_epochs=epochs, tol=0.0, **options,
    )  # fmt: skip
    return time.perf_counter() - start


def epoch_time(guest, host, keys, key_bits, workers, **options) -> float:
    one = timed(guest, host, keys, key_bits, workers, 1, **options)
    three = timed(guest, host, keys, key_bits, workers, 3, **options)
    return (three - one) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 12])
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every row, interleaved; medians")
    parser.add_argument("--no-regressions", action="store_true", help="only the binary and multi-class rows")
    parser.add_argument("--topology", choices=["coordinated", "arbiter-free"], default="coordinated")
    args = parser.parse_args()
    keypair = generate_keypair(args.key_bits)
    two_key = args.topology == "arbiter-free"
    keys = (
        {"topology": "arbiter-free", "keypairs": {"guest": keypair, "host1": generate_keypair(args.key_bits)}}
        if two_key
        else {"keypair": keypair}
    )
    guest, host = frames(args.rows, args.classes[0])
    common = dict(batch_size=args.batch)
    runs = [("binary-lr", 1, guest.assign(y=(guest["y"] == 0).astype(int)), host, {})]
    for k in args.classes:
        g, h = frames(args.rows, k)
        options, train_rows = TrainOptions(key_bits=args.key_bits, **common), int(args.rows * 0.8)
        per_row = (
            two_key_groups(options, train_rows, k)
            if two_key
            else slot_layout(options, train_rows, k, args.key_bits)
        ).groups
        runs.append((f"multiclass-lr K={k}", per_row, g, h, {"model": "multiclass-lr"}))
    if not args.no_regressions and not two_key:
        runs.append(("linear", 1, guest.assign(y=guest["g0"] * 2 + guest["g1"]), host, {"model": "linear"}))
        counts = guest.assign(y=np.random.default_rng(0).poisson(np.exp(0.3 * guest["g0"])))
        runs.append(("poisson", 2, counts, host, {"model": "poisson"}))
    times = np.array(
        [
            [
                epoch_time(g, h, keys, args.key_bits, args.workers, **common, **extra)
                for _, _, g, h, extra in runs
            ]
            for _ in range(args.repeats)
        ]
    )  # (repeats, rows): every round measures every row, so a load change hits all rows of a round
    ratios = np.median(times / times[:, :1], axis=0)
    print(
        f"\n{args.rows} rows (guest 5 + intercept, host 10 columns), batches of {args.batch}, "
        f"{args.key_bits}-bit key, workers={args.workers}, {args.topology}, {args.repeats} round(s), "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'model':<22}{'host ct/row':>12}{'epoch (s)':>12}{'x binary':>10}")
    for (name, per_row, *_), seconds, ratio in zip(runs, np.median(times, axis=0), ratios, strict=True):
        print(f"{name:<22}{per_row:>12}{seconds:>12.2f}{ratio:>10.2f}")


if __name__ == "__main__":
    main()
