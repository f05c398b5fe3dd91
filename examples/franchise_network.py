"""Franchise network: a head office (guest) and two outlets (hosts) train one model together.

The head office knows which customers responded to last season's offer (the label) and holds 10
columns of its own; each outlet holds 10 other columns about the same customers (here: the bundled
breast-cancer data, whose host half is split between the two outlets). No outlet sees another's
columns or the labels, and the head office never sees an outlet's columns or weights.

With two or more hosts, joint scoring uses ``reveal="sum"``: the outlets add pairwise masks that
cancel in the sum, so the head office learns only the total of the outlets' partial scores, never one
outlet's contribution.

    python examples/franchise_network.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import vfl  # noqa: E402
from vfl import datasets  # noqa: E402


def main() -> None:
    head_office = datasets.breast_guest()  # id, y (label), x0..x9
    outlets_data = datasets.breast_host()  # id, x0..x19
    columns = [c for c in outlets_data.columns if c != "id"]
    north = outlets_data[["id", *columns[:10]]]  # outlet 1: x0..x9
    south = outlets_data[["id", *columns[10:]]]  # outlet 2: x10..x19
    print(f"head office: {len(head_office)} customers, {head_office.shape[1] - 2} columns + label")
    print(f"outlet north: {north.shape[1] - 1} columns; outlet south: {south.shape[1] - 1} columns")

    started = time.perf_counter()
    result = vfl.simulate(
        head_office, [north, south], id="id", label="y",
        reveal="sum", key_bits=1024, max_epochs=20, seed=11,
    )  # fmt: skip
    print(
        f"\ntrained in {result.epochs} epochs, {time.perf_counter() - started:.1f} s; "
        f"{len(result.scores)} shared customers, {int(result.scores['held_out'].sum())} held out"
    )

    print("\nheld-out metrics at the head office")
    for name in ("auc", "ks", "accuracy", "precision", "recall", "f1", "log_loss"):
        print(f"  {name:<10}{result.metrics[name]:.4f}")

    print("\nweights per party (each keeps its own shard)")
    names = {"guest": "head office", "host1": "outlet north", "host2": "outlet south"}
    for party, shard in result.shards.items():
        print(f"  {names[party]:<13} {len(shard.columns):>2} weights")

    print("\nwhat each party sent (from its leakage ledger)")
    for party, ledger in result.ledgers.items():
        sent = [slots["sent"] for slots in ledger.totals.values() if "sent" in slots]
        print(
            f"  {names.get(party, party):<13} {sum(s['messages'] for s in sent):>4} messages "
            f"{sum(s['bytes'] for s in sent):>12,} bytes"
        )


if __name__ == "__main__":
    main()
