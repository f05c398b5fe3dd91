"""Coordinated logistic regression on default_credit: federated epoch time vs naive phe and the arithmetic floor.

    python benchmarks/bench_lr.py [--quick] [--bits 1024 2048] [--epochs N] [--workers W]
    python benchmarks/bench_lr.py --topology arbiter-free coordinated [--bits 1024 2048] [--rows R]

``--topology``: seconds per epoch of each training topology, same data, same run, and their ratio
(see ``bench_topologies``); the rest of this docstring is about the default mode.

For every key size, in ONE run (the machine is shared, so only same-run ratios mean anything):

* **federated**: two real ``vfl.simulate`` runs (guest + host + arbiter, PSI, preprocessing, training,
  scoring) with ``tol=0`` so early stopping never fires, one with 1 epoch and one with N epochs; the
  epoch time is ``(T_N - T_1) / (N - 1)``, which cancels start-up, PSI, key set-up, table building
  and scoring. CPU seconds per epoch are measured the same way over the whole process tree (this
  process, the forkserver and the crypto workers, from ``/proc``), which is less sensitive to other
  users of the machine than the wall time.
* **naive phe**: the same protocol with ``phe.EncryptedNumber`` objects one at a time, the way
  FATE-like code does it: encrypt every ``u_i``, form ``[[4 d_i]] = [[u_i]] + (u_g,i - 2 s_i)`` and
  ``obfuscate()`` it, multiply every ``[[4 d_i]]`` by every ``x_ij`` (floats, phe's own encoding)
  and accumulate with ``+``, the two loss dot products, then mask and decrypt every gradient element
  (no packing). Run on a subsample of training rows and scaled linearly: per-row work times the
  training rows plus per-batch work (masking, decryptions) times the number of mini-batches.
* **floor**: the modular operations an epoch cannot avoid, times their unit cost measured here with
  gmpy2 (one multiplication mod ``n^2``, one CRT decryption): per row, one DJN randomizer for the
  host's encryption and one for the guest's re-randomization (``ceil(n_bits / 2w) - 1`` modmuls each
  with the fixed-base table), one modmul to combine each, one to form ``[[4d]]``; ONE modmul per
  (row, column) term of ``X^T [[4d]]`` at every data party (DESIGN.md §8) and per row of each of the
  two one-column loss products; per batch, a randomizer per outgoing ciphertext, the packing
  squarings and multiplications, and one decryption per packed ciphertext. It is a one-core figure.

AUC: held-out AUC of the N-epoch federated model next to scikit-learn's ``LogisticRegression`` on the
joined data, same held-out rows (``result.scores['held_out']``) and the same preprocessing (each
party's scaler from its model shard).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _measure import decrypt_cost, fmt_s, modmul_cost, tree_cpu_seconds  # noqa: E402

import vfl  # noqa: E402
from vfl.crypto import DEFAULT_EXPONENT, generate_keypair, prepare_matrix  # noqa: E402
from vfl.crypto.packing import slot_bits_for, slots_per_ciphertext  # noqa: E402
from vfl.optim import epoch_batches  # noqa: E402
from vfl.options import TrainOptions  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fate"
GUEST_CSV = "default_credit_hetero_guest.csv"
HOST_CSV = "default_credit_hetero_host.csv"
ID, LABEL = "id", "y"
MASK_BITS = 40
LOGIT_BOUND = 2.0**16  # protocols.lr.LOGIT_BOUND: sizes the gradient masks


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load(rows: int | None, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    guest = pd.read_csv(DATA / GUEST_CSV)
    host = pd.read_csv(DATA / HOST_CSV)
    if rows is not None and rows < len(guest):
        guest = guest.sample(n=rows, random_state=seed).reset_index(drop=True)
        host = host[host[ID].isin(set(guest[ID]))].reset_index(drop=True)
    return guest, host


def standardized(frame: pd.DataFrame, drop: list[str]) -> np.ndarray:
    x = frame.drop(columns=drop).to_numpy(dtype=float)
    return (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)


# ---------------------------------------------------------------------------------------------
# Federated run
# ---------------------------------------------------------------------------------------------


def run_federated(guest, host, bits, keypair, epochs, workers):
    """Wall and CPU seconds of a full ``vfl.simulate`` run with ``epochs`` epochs (no early stop)."""
    cpu0 = tree_cpu_seconds()
    t = time.perf_counter()
    result = vfl.simulate(
        guest,
        [host],
        id=ID,
        label=LABEL,
        key_bits=bits,
        keypair=keypair,
        max_epochs=epochs,
        tol=0.0,
        workers=workers,
    )
    wall = time.perf_counter() - t
    time.sleep(0.3)  # let the forkserver reap the closed pool's workers (their CPU lands in its cutime)
    cpu1 = tree_cpu_seconds()
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    if result.epochs != epochs:
        raise RuntimeError(f"the run stopped after {result.epochs} epochs, expected {epochs}")
    return wall, cpu, result


def sklearn_auc(guest, host, result) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    order = result.scores[[ID, "held_out"]]
    g = order.merge(guest, on=ID, how="left")
    h = order.merge(host, on=ID, how="left")
    xg = result.shards["guest"].scaler().transform(g)
    xh = result.shards["host1"].scaler().transform(h)
    x = np.hstack([xg, xh])
    y = g[LABEL].to_numpy().astype(int)
    held = order["held_out"].to_numpy()
    model = LogisticRegression(max_iter=2000).fit(x[~held], y[~held])
    return float(roc_auc_score(y[held], model.predict_proba(x[held])[:, 1]))


# ---------------------------------------------------------------------------------------------
# Naive phe baseline
# ---------------------------------------------------------------------------------------------


def naive_phe(pk, sk, xg: np.ndarray, xh: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(seconds per training row, seconds per mini-batch) of the protocol with phe objects one by one."""
    rng = np.random.default_rng(7)
    wg = rng.normal(0, 0.1, xg.shape[1])
    wh = rng.normal(0, 0.1, xh.shape[1])
    s = 2.0 * y - 1.0
    ppk, psk = pk.phe, sk.phe
    m = len(y)

    t0 = time.perf_counter()
    u_h = xh @ wh  # host
    enc_u = [ppk.encrypt(float(v)) for v in u_h]
    u_g = xg @ wg  # guest: [[4d]] = [[u_h]] + u_g - 2 s, re-randomized before it goes to the host
    d4 = []
    for c, ug, si in zip(enc_u, u_g, s, strict=True):
        d = c + float(ug - 2.0 * si)
        d.obfuscate()
        d4.append(d)
    grads = []
    for x in (xg, xh):  # every data party: X_p^T [[4d]], one scalar product and one addition per term
        for j in range(x.shape[1]):
            acc = d4[0] * float(x[0, j])
            for i in range(1, m):
                acc = acc + d4[i] * float(x[i, j])
            grads.append(acc)
    z_ug = d4[0] * float(u_g[0])  # loss terms at the guest: [[z . u_g]] and [[s . u_h]]
    s_uh = enc_u[0] * float(s[0])
    for i in range(1, m):
        z_ug = z_ug + d4[i] * float(u_g[i])
        s_uh = s_uh + enc_u[i] * float(s[i])
    per_rows = time.perf_counter() - t0

    t1 = time.perf_counter()
    wg_enc = grads[xg.shape[1]] * float(wh[0])  # host: [[w_h . g_h]] for the loss
    for j in range(1, xh.shape[1]):
        wg_enc = wg_enc + grads[xg.shape[1] + j] * float(wh[j])
    for g in grads:  # mask every element, decrypt every element (no packing), unmask
        mask = secrets.randbits(128)
        value = psk.decrypt(g + mask) - mask
        assert math.isfinite(value)
    per_batch = time.perf_counter() - t1
    return per_rows / m, per_batch


# ---------------------------------------------------------------------------------------------
# Arithmetic floor
# ---------------------------------------------------------------------------------------------


def floor_counts(pk, n_train: int, xg: np.ndarray, xh: np.ndarray, options: TrainOptions) -> dict[str, int]:
    """Modmuls (incl. squarings) and decryptions one epoch cannot avoid (see the module docstring)."""
    rand = -(-pk.djn_exponent_bits // pk.djn_window) - 1  # modmuls per DJN randomizer
    mats = [prepare_matrix(xg), prepare_matrix(xh)]
    counts = {"randomizers": 0, "modmuls": 0, "decryptions": 0}
    for rows in epoch_batches(n_train, options, 0):
        m = len(rows)
        counts["randomizers"] += 2 * m  # host encryption of u, guest re-randomization of [[4d]]
        counts["modmuls"] += 2 * m + m  # combine both randomizers, form [[4d]]
        counts["modmuls"] += 2 * m  # the two one-column loss products
        counts["randomizers"] += 1  # host's [[w . g]]
        for mat in mats:
            k = mat.shape[1]
            counts["modmuls"] += m * k  # one modmul per (row, column) term
            bound = m * mat.max_abs * (LOGIT_BOUND + 2.0)
            exponent = DEFAULT_EXPONENT - mat.exponent_shift
            encoded = math.ceil(math.ldexp(bound * (1 + 2.0**-20), 4 * -exponent)) + 1
            slot = slot_bits_for(encoded, MASK_BITS)
            per = slots_per_ciphertext(pk, slot)
            groups = -(-k // per)
            counts["modmuls"] += (k - groups) * (slot + 1) + 2 * groups  # Horner packing + masks
            counts["randomizers"] += k + groups  # fresh randomness on rdot outputs and packed ciphertexts
            counts["decryptions"] += groups
    counts["decryptions"] += 1  # the epoch loss
    counts["modmuls"] += counts["randomizers"] * rand
    return counts


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def bench_bits(bits: int, args, guest: pd.DataFrame, host: pd.DataFrame) -> dict:
    pk, sk = generate_keypair(bits)
    options = TrainOptions(key_bits=bits)
    print(f"[{bits}] {len(guest):,} rows; federated run with 1 epoch ...", flush=True)
    t1, c1, _ = run_federated(guest, host, bits, (pk, sk), 1, args.workers)
    print(f"[{bits}]   {t1:.1f} s; federated run with {args.epochs} epochs ...", flush=True)
    tn, cn, result = run_federated(guest, host, bits, (pk, sk), args.epochs, args.workers)
    print(f"[{bits}]   {tn:.1f} s; naive phe on a subsample ...", flush=True)
    epoch = (tn - t1) / (args.epochs - 1)
    cpu_epoch = None if c1 is None or cn is None else (cn - c1) / (args.epochs - 1)
    n_train = int((~result.scores["held_out"]).sum())
    n_batches = len(epoch_batches(n_train, options, 0))

    xg_all = np.hstack([np.ones((len(guest), 1)), standardized(guest, [ID, LABEL])])
    xh_all = standardized(host.set_index(ID).loc[guest[ID]].reset_index(), [ID])
    y_all = guest[LABEL].to_numpy().astype(float)
    sub = args.naive_rows or (400 if bits <= 1024 else 100)
    pick = np.random.default_rng(3).choice(len(guest), size=min(sub, len(guest)), replace=False)
    per_row, per_batch = naive_phe(pk, sk, xg_all[pick], xh_all[pick], y_all[pick])
    naive_epoch = per_row * n_train + per_batch * n_batches

    print(f"[{bits}]   unit costs and the floor ...", flush=True)
    t_mm = modmul_cost(pk.n_square, 20_000 if bits <= 1024 else 6_000)
    t_dec = decrypt_cost(sk, pk, 40)
    counts = floor_counts(pk, n_train, xg_all[:n_train], xh_all[:n_train], options)
    floor = counts["modmuls"] * t_mm + counts["decryptions"] * t_dec
    sk_auc = sklearn_auc(guest, host, result)
    return {
        "bits": bits,
        "rows": len(guest),
        "train_rows": n_train,
        "batches": n_batches,
        "epoch": epoch,
        "cpu_epoch": cpu_epoch,
        "naive_epoch": naive_epoch,
        "naive_rows": len(pick),
        "floor": floor,
        "counts": counts,
        "modmul": t_mm,
        "decrypt": t_dec,
        "window": pk.djn_window,
        "auc": float(result.metrics["auc"]),
        "sk_auc": sk_auc,
        "t1": t1,
        "tn": tn,
    }


def print_table(results: list[dict], args) -> None:
    header = [
        "key",
        "rows (train)",
        "fed. s/epoch",
        "rows/s",
        "fed. CPU s/epoch",
        "naive phe s/epoch (scaled)",
        "speed-up vs phe",
        "floor s/epoch (1 core)",
        "wall / floor",
        "CPU / floor",
        "AUC fed.",
        "AUC sklearn",
    ]
    rows = []
    for r in results:
        cpu = r["cpu_epoch"]
        rows.append(
            [
                f"{r['bits']}",
                f"{r['rows']:,} ({r['train_rows']:,})",
                fmt_s(r["epoch"]),
                f"{r['train_rows'] / r['epoch']:,.0f}",
                "n/a" if cpu is None else fmt_s(cpu),
                fmt_s(r["naive_epoch"]),
                f"{r['naive_epoch'] / r['epoch']:,.0f}x",
                fmt_s(r["floor"]),
                f"{r['epoch'] / r['floor']:.2f}x",
                "n/a" if cpu is None else f"{cpu / r['floor']:.2f}x",
                f"{r['auc']:.4f}",
                f"{r['sk_auc']:.4f}",
            ]
        )
    notes = []
    for r in results:
        c = r["counts"]
        notes.append(
            f"{r['bits']}-bit: modmul mod n^2 {r['modmul'] * 1e6:.2f} us, decryption {r['decrypt'] * 1e3:.2f} ms, "
            f"DJN window {r['window']} ({-(-r['bits'] // 2 // r['window']) - 1} modmuls/randomizer); floor = "
            f"{c['modmuls']:,} modmuls ({c['randomizers']:,} randomizers) + {c['decryptions']} decryptions; "
            f"{r['batches']} batches/epoch; runs: 1 epoch {r['t1']:.1f} s, {args.epochs} epochs {r['tn']:.1f} s; "
            f"naive phe measured on {r['naive_rows']} rows"
        )
    caption = (
        f"Epoch time = (T[{args.epochs} epochs] - T[1 epoch]) / {args.epochs - 1} of two real vfl.simulate runs (tol=0, "
        f"default options: whitened SGD on 10,000+ training rows, else Adam; batch {TrainOptions().batch_size}, "
        "80/20 split; the AUC is after these "
        "epochs, not at convergence), same for CPU over the process tree; workers="
        f"{args.workers or os.cpu_count()} on a {os.cpu_count()}-core machine shared with other users. Naive phe = "
        "the same protocol with phe.EncryptedNumber one by one (encrypt, obfuscate, float *, +, mask, decrypt each "
        "element), on a subsample, scaled linearly to the training rows and batches. Floor = unavoidable modmuls "
        "(1 per (row, column) term, DJN randomizers, packing) and decryptions x unit costs measured in this run, "
        "one core. Targets: speed-up >= 20x, wall / floor <= 3x."
    )
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title="Coordinated LR on default_credit (guest 13+1 cols, host 10 cols)", caption=caption
        )
        for h in header:
            table.add_column(h, justify="right")
        for row in rows:
            table.add_row(*row)
        console = Console(width=200)
        console.print(table)
        for n in notes:
            console.print(f"  {n}")
    except ImportError:  # pragma: no cover - plain fallback
        widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
        print(" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        print(caption)
        for n in notes:
            print("  " + n)


# ---------------------------------------------------------------------------------------------
# Topologies: arbiter-free (two-key) vs coordinated, same run
# ---------------------------------------------------------------------------------------------


class _EpochClock:
    """Times of the "epoch N: loss" log records (the party that decides stopping logs one per epoch)."""

    def __init__(self) -> None:
        import logging

        self.times: list[float] = []
        self.cpu: list[float | None] = []  # CPU seconds of the process tree at the same moments
        self.handler = logging.Handler()
        self.handler.emit = self._emit  # type: ignore[method-assign]
        self.loggers = [logging.getLogger(n) for n in ("vfl.protocols.lr", "vfl.protocols.lr_two_key")]

    def _emit(self, record) -> None:
        if str(record.msg).startswith("epoch "):
            self.times.append(time.perf_counter())
            self.cpu.append(tree_cpu_seconds())

    def __enter__(self) -> _EpochClock:
        import logging

        for lg in self.loggers:
            lg.addHandler(self.handler)
            lg.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        for lg in self.loggers:
            lg.removeHandler(self.handler)


def bench_topologies(args, guest: pd.DataFrame, host: pd.DataFrame) -> None:
    """One ``vfl.simulate`` run per (key size, topology) with ``--epochs`` epochs (tol=0); the time of an
    epoch is the time between the ends of consecutive epochs (so start-up, PSI, key generation and
    table building are not counted), the mean over epochs 2..N. Same data, same options, same run."""
    results = []
    for bits in args.bits:
        keypair = generate_keypair(bits)
        row = {"bits": bits}
        for topology in args.topology:
            print(f"[{bits}] {topology}: {len(guest):,} rows, {args.epochs} epochs ...", flush=True)
            cpu0 = tree_cpu_seconds()
            t = time.perf_counter()
            with _EpochClock() as clock:
                result = vfl.simulate(
                    guest, [host], id=ID, label=LABEL, key_bits=bits, max_epochs=args.epochs, tol=0.0,
                    workers=args.workers, topology=topology, keypair=keypair if topology == "coordinated" else None,
                )  # fmt: skip
            wall = time.perf_counter() - t
            cpu1 = tree_cpu_seconds()
            ends = clock.times[-args.epochs :]
            per_epoch = statistics.mean(b - a for a, b in zip(ends, ends[1:], strict=False))
            cpus = clock.cpu[-args.epochs :]
            row[f"{topology} cpu/epoch"] = (
                None if None in cpus else statistics.mean(b - a for a, b in zip(cpus, cpus[1:], strict=False))
            )
            row[topology] = per_epoch
            row[f"{topology} total"] = wall
            row[f"{topology} cpu"] = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
            row[f"{topology} auc"] = float(result.metrics["auc"])
            row["train_rows"] = int((~result.scores["held_out"]).sum())
            print(f"[{bits}]   {per_epoch:.2f} s/epoch ({wall:.1f} s in all)", flush=True)
        results.append(row)
    header = ["key", "rows (train)", *(f"{t} s/epoch" for t in args.topology)]
    pairs = [(a, b) for i, a in enumerate(args.topology) for b in args.topology[i + 1 :]]
    header += [f"{b} / {a}" for a, b in pairs]
    header += [f"{t} CPU s/epoch" for t in args.topology] + [f"CPU {b} / {a}" for a, b in pairs]
    header += [f"AUC {t}" for t in args.topology]
    header += [f"{t} run s (CPU s)" for t in args.topology]
    lines = []
    for r in results:
        cells = [str(r["bits"]), f"{len(guest):,} ({r['train_rows']:,})"]
        cells += [f"{r[t]:.2f}" for t in args.topology]
        cells += [f"{r[b] / r[a]:.2f}x" for a, b in pairs]
        cpu = {t: r[f"{t} cpu/epoch"] for t in args.topology}
        cells += ["n/a" if cpu[t] is None else f"{cpu[t]:.2f}" for t in args.topology]
        cells += ["n/a" if None in (cpu[a], cpu[b]) else f"{cpu[b] / cpu[a]:.2f}x" for a, b in pairs]
        cells += [f"{r[f'{t} auc']:.4f}" for t in args.topology]
        for t in args.topology:
            cpu = r[f"{t} cpu"]
            cells.append(f"{r[f'{t} total']:.1f} ({'n/a' if cpu is None else f'{cpu:.1f}'})")
        lines.append(cells)
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    print()
    print(
        f"Training topologies on default_credit, one host (guest 13+1 cols, host 10 cols), {len(guest):,} rows"
    )
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for cells in lines:
        print(" | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    print(
        f"s/epoch = mean time between consecutive epoch ends over epochs 2..{args.epochs} of one vfl.simulate run "
        f"(tol=0, default options: whitened SGD on 10,000+ training rows, else Adam; batch "
        f"{TrainOptions().batch_size}); workers={args.workers or os.cpu_count()} "
        f"on a {os.cpu_count()}-core machine shared with other users; CPU = this process and its crypto workers "
        "(/proc) over the same epochs, less sensitive to the other users; a ratio b / a > 1 means a is faster. "
        "Target: coordinated / arbiter-free >= 1.4x."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024-bit only, a 5,000-row subsample (~3 min)")
    parser.add_argument("--bits", type=int, nargs="+", default=None, help="key sizes (default: 1024 2048)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of the long run (default 3; quick 2)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="crypto worker processes (default: all cores)"
    )
    parser.add_argument("--rows", type=int, default=None, help="subsample this many rows (default: all)")
    parser.add_argument("--naive-rows", type=int, default=None, help="rows of the naive phe subsample")
    parser.add_argument(
        "--topology",
        nargs="+",
        choices=("arbiter-free", "coordinated"),
        default=None,
        help="compare training topologies instead (seconds per epoch each, and the ratio)",
    )
    args = parser.parse_args()
    if args.topology:
        args.bits = args.bits or [1024, 2048]
        args.epochs = args.epochs or 3
        guest, host = load(args.rows, seed=11)
        bench_topologies(args, guest, host)
        return
    if args.quick:
        args.bits = args.bits or [1024]
        args.rows = args.rows or 5_000
        args.epochs = args.epochs or 2
        args.naive_rows = args.naive_rows or 200
    args.bits = args.bits or [1024, 2048]
    args.epochs = args.epochs or 3
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the epoch time is a difference of two runs)")
    guest, host = load(args.rows, seed=11)
    results = [bench_bits(bits, args, guest, host) for bits in args.bits]
    print_table(results, args)


if __name__ == "__main__":
    main()
