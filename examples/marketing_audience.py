"""Marketing audience: a retailer and a partner find their shared customers, then score them together.

The retailer (guest) knows who bought after last campaign (the label); the partner (host) holds
other columns about its own customers. Their customer lists only partly overlap: here each side
misses a different 30 % of the bundled breast-cancer rows, and ids are strings like "cust-000123".

1. ``vfl.simulate_psi`` measures the overlap with private set intersection: both learn which of
   their own customers are shared, and nothing about the others.
2. ``vfl.simulate`` trains on the shared customers and scores them; the lift table says how much
   better than average the top-scored decile converts.

    python examples/marketing_audience.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

import vfl  # noqa: E402
from vfl import datasets  # noqa: E402


def customer_list(frame, keep: float, seed: int):  # noqa: ANN001, ANN201
    """A random ``keep`` share of the rows, with ids as strings like 'cust-000123'."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(frame), size=round(keep * len(frame)), replace=False))
    out = frame.iloc[rows].reset_index(drop=True)
    out["id"] = [f"cust-{i:06d}" for i in out["id"]]
    return out


def main() -> None:
    retailer = customer_list(datasets.breast_guest(), keep=0.7, seed=1)  # id, y, x0..x9
    partner = customer_list(datasets.breast_host(), keep=0.7, seed=2)  # id, x0..x19
    print(
        f"retailer: {len(retailer)} customers (e.g. {retailer['id'][0]}); partner: {len(partner)} customers"
    )

    started = time.perf_counter()
    shared_retailer, shared_partner = vfl.simulate_psi(retailer, [partner], id="id")
    overlap = len(shared_retailer)
    print(
        f"\nPSI: {overlap} shared customers in {time.perf_counter() - started:.1f} s "
        f"({overlap / len(retailer):.0%} of the retailer's list, {overlap / len(partner):.0%} of the partner's)"
    )
    assert (shared_retailer["id"] == shared_partner["id"]).all()  # same customers, same order

    started = time.perf_counter()
    result = vfl.simulate(retailer, [partner], id="id", label="y", key_bits=1024, max_epochs=8, seed=3)
    print(
        f"trained and scored the joint audience in {time.perf_counter() - started:.1f} s "
        f"({result.epochs} epochs, {int(result.scores['held_out'].sum())} held-out customers)"
    )
    print(f"held-out AUC {result.metrics['auc']:.4f}, KS {result.metrics['ks']:.4f}")

    top = result.lift.iloc[0]
    print(
        f"\ntop decile: {int(top['positives'])} of {int(top['rows'])} held-out customers converted "
        f"({top['rate']:.0%} vs {result.metrics['positive_rate']:.0%} on average): lift {top['lift']:.2f}"
    )
    print(
        result.lift[["decile", "rows", "positives", "rate", "lift", "cumulative_gain"]].to_string(
            index=False, float_format=lambda x: f"{x:.3f}"
        )
    )

    audience = result.scores.sort_values("score", ascending=False)
    print("\nthe 5 best-scored shared customers (at the retailer only):")
    print(audience.head(5).to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
