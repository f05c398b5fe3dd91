"""Benchmark: an audience job (PSI + encrypted cross-tab) against the PSI alone on the same ids, same run.

Guest and host each run in their own process (a multiprocessing Pipe carrying Arrow IPC bytes, the
loopback ``PipeChannel`` of ``bench_psi.py``). Both hold the same ``n`` customers (all shared), the
guest a 10-category segment column and one metric, the host a 20-category segment column and one
metric (2 metric columns, 2048-bit key, epsilon 1, k = 20). Each party runs the real role runtime
(``vfl.parties.audience.run_guest`` / ``run_host``: local checks, agreement, PSI, cross-tab, release),
then, on the same session, the PSI alone on the same ids (the baseline). Each party's key is generated
before the clock starts (its time is printed apart); the layout decides which party encrypts (here the
guest, two rows a plaintext: DESIGN.md §13). The table shows wall time (the slower party,
from a barrier both pass), each party's peak resident memory (main
process; pool workers apart), and the ratio audience / PSI measured in the same run.

    python benchmarks/bench_audience.py             # 100k and 1M shared customers
    python benchmarks/bench_audience.py --quick     # 10k and 100k
    python benchmarks/bench_audience.py --sizes 20000 --key-bits 1024

Target (issue 13): audience job <= 3x the PSI time on the same ids, at 1M shared customers.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _common import parse_sizes, run_two_parties  # noqa: E402

GUEST_SEGMENTS, HOST_SEGMENTS = 10, 20


def make_data(role: str, n: int, metric_owners: str = "split") -> pd.DataFrame:
    """Both parties: ids 0..n-1 (all shared); a segment column and a metric, correlated through a latent."""
    rng = np.random.default_rng([13, n])
    latent = rng.normal(size=n)
    own = np.random.default_rng([13, n, 0 if role == "guest" else 1])
    noisy = latent + own.normal(scale=0.7, size=n)
    cats = GUEST_SEGMENTS if role == "guest" else HOST_SEGMENTS
    cuts = np.quantile(noisy, np.linspace(0, 1, cats + 1)[1:-1])
    labels = [f"{'g' if role == 'guest' else 'h'}{i:02d}" for i in range(cats)]
    segment = pd.Categorical.from_codes(np.searchsorted(cuts, noisy), categories=labels)
    metric = np.exp(4 + 0.5 * noisy + own.normal(scale=0.5, size=n))
    ids = [f"customer-{i:09d}@example.com" for i in own.permutation(n)]
    name = "gseg" if role == "guest" else "hseg"
    frame = pd.DataFrame({"id": ids, name: segment})
    if metric_owners == "split":  # one metric at each party
        frame["gm" if role == "guest" else "hm"] = metric
    elif role == "host":  # both metrics at the host
        frame["hm"], frame["hm2"] = metric, np.sqrt(metric)
    return frame


def metric_table(metric_owners: str) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
    if metric_owners == "split":
        return {"guest": ["gm"], "host": ["hm"]}, {"gm": [0.0, 1000.0], "hm": [0.0, 1000.0]}
    return {"guest": [], "host": ["hm", "hm2"]}, {"hm": [0.0, 1000.0], "hm2": [0.0, 40.0]}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_rss(_: int) -> tuple[int, float]:
    time.sleep(0.3)
    return os.getpid(), _maxrss_mb()


def floor_costs(key_bits: int, count: int = 1000) -> dict[str, float]:
    """The arithmetic floor, in this process: one key-owner CRT encryption and one modmul mod n^2 (CPU seconds:
    comparable with the steps' CPU seconds on a loaded machine)."""
    import secrets

    from gmpy2 import mpz

    from vfl.crypto import generate_keypair
    from vfl.crypto.randomness import key_owner_encrypt, key_owner_tables

    pk, sk = generate_keypair(key_bits)
    key_owner_tables(sk)
    plains = [mpz(secrets.randbelow(int(pk.n))) for _ in range(count)]
    t = time.process_time()
    cts = key_owner_encrypt(sk, plains)
    encrypt = (time.process_time() - t) / count
    acc, n2 = cts[0], pk.n_square
    t = time.process_time()
    for c in cts:
        acc = acc * c % n2
    return {"encrypt": encrypt, "modmul": (time.process_time() - t) / count}


def party(
    role: str, n: int, workers: int, key_bits: int, owners: str, conn: Any, barrier: Any, out: Any
) -> None:
    from bench_psi import PipeChannel

    from vfl.analytics.options import AudienceJobOptions
    from vfl.crypto import WorkerPool, generate_keypair
    from vfl.parties import audience
    from vfl.parties.common import Job
    from vfl.protocols import psi
    from vfl.psi import PsiOptions

    data = make_data(role, n, owners)
    metrics, bounds = metric_table(owners)
    options = AudienceJobOptions.from_dict(
        {
            "segments": {"guest": ["gseg"], "host": ["hseg"]},
            "metrics": metrics,
            "bounds": bounds,
            "key_bits": key_bits,
            "max_categories": max(GUEST_SEGMENTS, HOST_SEGMENTS),
        }
    )
    job = Job("bench-audience", "guest", ("host",), kind="audience", audience=options,
              psi=PsiOptions(workers=workers, timeout=3600))  # fmt: skip
    channel = PipeChannel(role, "host" if role == "guest" else "guest", conn)
    session = job.session(channel)
    keygen = 0.0
    keypair = None
    floor = floor_costs(key_bits) if role == _plan(n, key_bits, owners)[0] else {}  # the encrypting party
    t = time.perf_counter()
    keypair = generate_keypair(key_bits)  # each party's own key (the encrypting party's is used)
    keygen = time.perf_counter() - t
    with WorkerPool(workers) as pool:
        list(pool.executor.map(_worker_rss, range(workers)))  # start the workers before the clock starts
        barrier.wait()
        t0 = time.perf_counter()
        if role == "guest":
            run = audience.run_guest(session, job, data, id_column="id", workers=pool, keypair=keypair)
            cells = int((~run.crosstabs["host"]["suppressed"].astype(bool)).sum())
        else:
            run = audience.run_host(session, job, data, id_column="id", workers=pool, keypair=keypair)
            cells = 0
        t_audience = time.perf_counter() - t0
        worker_rss = max(dict(pool.executor.map(_worker_rss, range(workers * 2))).values())
    rss_audience = _maxrss_mb()
    barrier.wait()
    t1 = time.perf_counter()
    options_psi = PsiOptions(workers=workers, timeout=3600, tag="bench-psi")
    if role == "guest":
        result = psi.run_guest(session, data["id"], ["host"], options_psi, column="id")
    else:
        result = psi.run_host(session, data["id"], "guest", options_psi, column="id")
    t_psi = time.perf_counter() - t1
    report = (t_audience, t_psi, result.size, rss_audience, worker_rss, keygen, cells, run.timings, floor)
    out.put((role, *report))


def run_sizes(n: int, workers: int, key_bits: int, owners: str) -> dict[str, tuple]:
    return run_two_parties(party, (n, workers, key_bits, owners))


def step_table(
    n: int, plan: tuple[str, float], workers: int, guest: dict, host: dict, floor: dict
) -> list[str]:
    """Where the time goes, with the arithmetic floor of the CPU-bound steps (on ``workers`` cores)."""
    encrypts, per_row = plan
    folds = "host" if encrypts == "guest" else "guest"
    cts = int(np.ceil(n * per_row))
    blocks = int(np.ceil(per_row))  # modmuls per row: one per block (a paired ciphertext: one per half)
    enc_floor = cts * floor["encrypt"]
    fold_floor = n * blocks * floor["modmul"]
    floors = {
        f"{encrypts}: encrypt (cpu)": (enc_floor, f"{{per:.0f}} us per ciphertext, floor {floor['encrypt'] * 1e6:.0f} us", cts),
        f"{folds}: fold (cpu)": (fold_floor, f"{{per:.1f}} us per row, floor {blocks} modmul = {blocks * floor['modmul'] * 1e6:.1f} us", n),
    }  # fmt: skip
    lines = [f"    {'step':<44} | {'seconds':>8} | {'floor s':>8} | note"]
    lines.append(f"    {'PSI (audience-psi, wall)':<44} | {host.get('psi', 0.0):8.2f} | {'':>8} |")
    for name, value in [*host.items(), *guest.items()]:
        if name == "psi":
            continue
        fl, note, units = floors.get(name, (None, "", 1))
        cell = "" if fl is None else f"{fl:8.2f}"
        lines.append(f"    {name:<44} | {value:8.2f} | {cell:>8} | {note.format(per=value / units * 1e6)}")
    lines.append(
        f"    floor of the cross-tab on {workers} cores: encryption {enc_floor / workers:.2f} s + fold "
        f"{fold_floor / workers:.2f} s ({n:,} rows, {per_row:g} ciphertext(s) a row, the {encrypts} encrypts); "
        "(cpu) rows and the floor are CPU seconds summed over the workers, the others wall-clock seconds"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k only")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated numbers of shared customers")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool workers per party")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument(
        "--metrics",
        choices=("split", "host", "both"),
        default="split",
        help="split: one metric at each party (the guest raises the rows to its metric values); host: both "
        "metrics at the host; both: run each",
    )
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes, args.quick, [10_000, 100_000], [100_000, 1_000_000])
    print(
        f"audience benchmark: {os.cpu_count()} cores, {args.workers} workers per party, {args.key_bits}-bit key, "
        f"{GUEST_SEGMENTS} guest x {HOST_SEGMENTS} host segments, 2 metrics, guest and host as two processes; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    owners = ("split", "host") if args.metrics == "both" else (args.metrics,)
    for n in sizes:
        for who in owners:
            r = run_sizes(n, args.workers, args.key_bits, who)
            g, h = r["guest"], r["host"]
            assert g[2] == n and h[2] == n, f"PSI found {g[2]} shared ids, expected {n}"
            wall_audience, wall_psi = max(g[0], h[0]), max(g[1], h[1])
            rows.append((n, who, wall_audience, wall_psi, g, h))
            plan = _plan(n, args.key_bits, who)
            print(
                f"  {n:>9,} ({who} metrics, the {plan[0]} encrypts, {plan[1]:g} ciphertext(s) per row): audience "
                f"{wall_audience:.1f} s, PSI alone {wall_psi:.1f} s, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            print("\n".join(step_table(n, plan, args.workers, g[7], h[7], g[8] or h[8])), flush=True)
    header = (
        f"{'shared':>10} | {'metrics':>7} | {'audience s':>10} | {'PSI alone s':>11} | {'ratio':>6} | {'guest MB':>8} | "
        f"{'host MB':>7} | {'worker MB':>9} | {'keygen s':>8} | {'released cells':>14}"
    )
    print()
    print(header)
    print("-" * len(header))
    for n, who, wa, wp, g, h in rows:
        print(
            f"{n:>10,} | {who:>7} | {wa:10.1f} | {wp:11.1f} | {wa / wp:5.2f}x | {g[3]:8.0f} | {h[3]:7.0f} | "
            f"{max(g[4], h[4]):9.0f} | {max(g[5], h[5]):8.1f} | {g[6]:>14}"
        )
    print(
        "\nratio = audience job wall time (its own PSI + the encrypted cross-tab + release) / the PSI alone on the "
        "same ids in the same run (target <= 3x at 1M); metrics: split = one at each party, host = both at the "
        "host; MB = peak resident memory of each party's main process, worker = the largest pool worker's"
    )


def _plan(n: int, key_bits: int, owners: str) -> tuple[str, float]:
    """Which party encrypts the benchmark's rows, and how many ciphertexts a row costs it."""
    from vfl.analytics.options import AudienceJobOptions
    from vfl.analytics.plan import plan

    metrics, bounds = metric_table(owners)
    options = AudienceJobOptions.from_dict(
        {"segments": {"guest": ["gseg"], "host": ["hseg"]}, "metrics": metrics, "bounds": bounds,
         "max_categories": max(GUEST_SEGMENTS, HOST_SEGMENTS)}
    ).mechanism  # fmt: skip
    guest = ("guest", {"gseg": tuple(range(GUEST_SEGMENTS))})
    chosen = plan(options, guest, ("host", {"hseg": tuple(range(HOST_SEGMENTS))}), rows=n, key_bits=key_bits)
    return chosen.encrypts, chosen.layout.ciphertexts_per_row


if __name__ == "__main__":
    main()
