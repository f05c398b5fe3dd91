"""Quickstart: a guest and a host train a logistic regression together, all in this process.

The bundled breast-cancer data (FATE's vertical split) is held by two parties: the guest has the
label ``y`` and 10 columns, the host 20 other columns about the same 569 patients. ``vfl.simulate``
runs the guest, the host and the arbiter (the Paillier key holder) in threads of this process, with
every message going through the real protocol code (PSI, encrypted gradients, masks), and returns
the guest's view: held-out metrics, the lift table, every party's model shard and leakage ledger.

    python examples/quickstart.py

A 1024-bit key and a few epochs keep it to a few seconds; real jobs use the defaults
(2048-bit key, up to 50 epochs with early stopping).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import vfl  # noqa: E402
from vfl import datasets  # noqa: E402
from vfl.ledger import Ledger  # noqa: E402


def sent_totals(ledger: Ledger) -> tuple[int, int]:
    """(messages, bytes) a party sent, summed over its peers, from its leakage ledger."""
    sent = [slots["sent"] for slots in ledger.totals.values() if "sent" in slots]
    return sum(s["messages"] for s in sent), sum(s["bytes"] for s in sent)


def main() -> None:
    guest = datasets.breast_guest()  # id, y, x0..x9
    host = datasets.breast_host()  # id, x0..x19
    print(
        f"guest: {guest.shape[0]} rows x {guest.shape[1] - 2} columns + label; "
        f"host: {host.shape[0]} rows x {host.shape[1] - 1} columns"
    )

    started = time.perf_counter()
    result = vfl.simulate(guest, [host], id="id", label="y", key_bits=1024, max_epochs=10, seed=7)
    print(
        f"trained in {result.epochs} epochs, {time.perf_counter() - started:.1f} s "
        f"({len(result.scores)} aligned rows, {int(result.scores['held_out'].sum())} held out)"
    )

    print("\nheld-out metrics at the guest")
    for name in ("auc", "ks", "accuracy", "precision", "recall", "f1", "log_loss"):
        print(f"  {name:<10}{result.metrics[name]:.4f}")

    print("\nlift by decile (held-out rows ranked by score)")
    print(
        result.lift[["decile", "rows", "positives", "rate", "lift", "cumulative_gain"]].to_string(
            index=False, float_format=lambda x: f"{x:.3f}"
        )
    )

    print("\nwhat each party sent (from its leakage ledger)")
    for party, ledger in result.ledgers.items():
        messages, size = sent_totals(ledger)
        print(f"  {party:<8} ({ledger.role:<7}) {messages:>4} messages {size:>12,} bytes")

    print("\nmodel shards: each party keeps only its own weights")
    for party, shard in result.shards.items():
        print(f"  {party:<8} {len(shard.columns)} weights: {', '.join(shard.columns[:4])}, ...")


if __name__ == "__main__":
    main()
