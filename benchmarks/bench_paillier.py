"""Paillier engine vs python-paillier, side by side in one run (not a test).

    python benchmarks/bench_paillier.py [--quick] [--workers N]

Every row times the engine and its baseline in the same process, alternately (best of 2 runs each in
full mode), so machine load affects both; the ratio is baseline / engine. Where the baseline would take minutes (phe's naive
``X^T [[d]]`` loop, 10,000 phe encryptions), it runs on a subsample and is scaled linearly -- the table
says so. The floor section counts the 4096-bit modular multiplications each operation needs and
compares the engine's time to that count times the measured cost of one.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmpy2 import mpz  # noqa: E402

from vfl.crypto import (  # noqa: E402
    EncryptedVector,
    RandomnessPool,
    WorkerPool,
    decrypt,
    decrypt_packed,
    encrypt,
    fixed_base_table,
    generate_keypair,
    mask_and_pack,
    prepare_matrix,
    randomizers,
)
from vfl.crypto.randomness import key_owner_tables  # noqa: E402


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def side_by_side(engine, baseline, repeat: int):
    """Alternate engine and baseline runs ``repeat`` times; best time of each (load hits both alike)."""
    t_e = t_b = float("inf")
    out_e = out_b = None
    for _ in range(repeat):
        t, out_e = timed(engine)
        t_e = min(t_e, t)
        t, out_b = timed(baseline)
        t_b = min(t_b, t)
    return t_e, out_e, t_b, out_b


def fmt_t(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def modmul_cost(n_square: mpz, count: int) -> float:
    a = [mpz(secrets.randbelow(int(n_square))) for _ in range(64)]
    b = a[1:] + a[:1]
    t = time.perf_counter()
    for _ in range(count // 64):
        for x, y in zip(a, b, strict=True):
            _ = x * y % n_square
    return (time.perf_counter() - t) / (count // 64 * 64)


def heu_encrypt_time(bits: int, count: int) -> tuple[float, str] | None:
    """Seconds for SecretFlow HEU's ZPaillier to encrypt ``count`` integers (vectorized ``heu.numpy``),
    or None if ``heu`` (``pip install sf-heu``) is not importable."""
    try:
        from heu import numpy as hnp
        from heu import phe as hphe
    except ImportError:
        return None
    kit = hnp.setup(hphe.SchemaType.ZPaillier, bits)
    encryptor = kit.encryptor()
    plain = kit.array(np.arange(count, dtype=np.int64), hphe.BigintEncoderParams())
    encryptor.encrypt(plain[:16])  # warm-up (HEU precomputes its fixed-base table lazily)
    t_wall, ct = timed(lambda: encryptor.encrypt(plain))
    back = kit.decryptor().decrypt(ct).to_numpy()
    assert np.array_equal(back.astype(np.int64), np.arange(count))
    return t_wall, "SecretFlow HEU ZPaillier (public-key encryptor, heu.numpy batch; HEU's own thread pool)"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n{title}")
    print(line)
    print(" | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes; finishes in well under a minute")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="process pool size")
    parser.add_argument("--bits", type=int, default=2048)
    args = parser.parse_args()
    quick = args.quick
    m, k = (2_000, 10) if quick else (10_000, 10)
    phe_rows = 60 if quick else 300
    n_enc = 1_000 if quick else 10_000
    phe_enc = 40 if quick else 150
    repeat = 1 if quick else 2
    rng = np.random.default_rng(0)
    started = time.perf_counter()

    t_key, (pk, sk) = timed(lambda: generate_keypair(args.bits))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_table, table = timed(lambda: fixed_base_table(pk))
    mm_samples = [modmul_cost(pk.n_square, 5_000 if quick else 20_000)]
    t_mm = mm_samples[0]
    nwin = len(table.rows)
    print(
        f"vfl Paillier engine benchmark ({'quick' if quick else 'full'}): {args.bits}-bit key (generated in "
        f"{fmt_t(t_key)}), fixed-base table {nwin} x {len(table.rows[0]) - 1} entries built in {fmt_t(t_table)}, "
        f"one {2 * args.bits}-bit modmul = {t_mm * 1e6:.2f} us, workers = {args.workers}"
    )
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (timings are noisy)")
    rows: list[list[str]] = []
    floor: list[list[str]] = []

    def add(op, size, engine, baseline, target, note=""):
        ratio = baseline / engine
        ok = "" if target is None else ("met" if ratio >= target else "NOT MET")
        rows.append(
            [
                op,
                size,
                fmt_t(engine),
                fmt_t(baseline),
                f"{ratio:.1f}x",
                "-" if target is None else f">= {target}x",
                ok,
                note,
            ]
        )

    floor_items: list[tuple[str, int, float]] = []

    def add_workers(op, size, engine, baseline, target=None, note=""):
        """The row of ``op`` on the worker pool: against the same baseline as its 1-process row."""
        full_note = f"same baseline; {note}" if note else "same baseline"
        add(f"{op}, {args.workers} workers", size, engine, baseline, target, full_note)

    def add_floor(op, count, engine):
        # the modmul cost is sampled after every section; the floor uses the fastest sample
        mm_samples.append(modmul_cost(pk.n_square, 5_000))
        floor_items.append((op, count, engine))

    # ---- data -----------------------------------------------------------------------------------
    x = rng.normal(size=(m, k))
    x[:, 0] = 1.0
    d = rng.uniform(-1, 1, size=m)
    enc_d = encrypt(pk, d)

    with WorkerPool(args.workers) as workers:
        t_warm, _ = timed(lambda: workers.warm_up(pk))  # process start + table build in each worker
        # ---- (1) X^T [[d]] ------------------------------------------------------------------------
        t_prep, prepared = timed(lambda: prepare_matrix(x))
        phe_enc_d = enc_d[:phe_rows].to_phe()

        def naive():
            out = []
            for j in range(k):
                acc = phe_enc_d[0] * float(x[0, j])
                for i in range(1, phe_rows):
                    acc = acc + phe_enc_d[i] * float(x[i, j])
                out.append(acc)
            return out

        t_rdot, grad, t_naive_sub, naive_out = side_by_side(lambda: enc_d.rdot(prepared), naive, repeat)
        t_rdot_par, _ = timed(lambda: enc_d.rdot(prepared, workers=workers), repeat)
        t_naive = t_naive_sub * m / phe_rows
        check = decrypt(sk, grad)
        assert np.allclose(check, x.T @ decrypt(sk, enc_d), atol=prepared.output_error(np.abs(d).sum()).max())
        assert np.allclose(
            [sk.phe.decrypt(v) for v in naive_out], x[:phe_rows].T @ decrypt(sk, enc_d[:phe_rows]), atol=1e-6
        )
        note = f"phe loop timed on {phe_rows} rows x {k}, scaled x{m / phe_rows:g}; prepare_matrix {fmt_t(t_prep)} once"
        add(f"X^T[[d]] {m}x{k}, 1 process", f"{m * k:,} terms", t_rdot, t_naive, 25, note)
        add_workers(
            f"X^T[[d]] {m}x{k}", f"{m * k:,} terms", t_rdot_par, t_naive, 25,
            f"pool warm-up (start + tables) {fmt_t(t_warm)} not included",
        )  # fmt: skip
        rr = k * (nwin - 1 + 1)  # output re-randomization without a pool
        add_floor(f"X^T[[d]] {m}x{k} (1 process)", prepared.modmul_count(m) + rr, t_rdot)

        # ---- (2) encryption ------------------------------------------------------------------------
        values = rng.normal(size=n_enc) * 100
        t_enc, enc, t_phe_sub, _ = side_by_side(
            lambda: encrypt(pk, values), lambda: [pk.phe.encrypt(float(v)) for v in values[:phe_enc]], repeat
        )
        t_phe = t_phe_sub * n_enc / phe_enc
        t_enc_par, _ = timed(lambda: encrypt(pk, values, workers=workers), repeat)
        pool = RandomnessPool(pk, workers)
        t_fill, _ = timed(lambda: (pool.fill(n_enc), pool.wait()))
        t_online, enc_online = timed(lambda: encrypt(pk, values, randomness=pool))
        assert np.array_equal(decrypt(sk, enc_online[:50]), decrypt(sk, enc[:50]))
        note = f"phe timed on {phe_enc} values, scaled x{n_enc / phe_enc:g}"
        add(f"encrypt {n_enc:,}, no pool, 1 process", f"{n_enc:,} values", t_enc, t_phe, 12, note)
        add_workers(f"encrypt {n_enc:,}", f"{n_enc:,} values", t_enc_par, t_phe)
        add(
            f"encrypt {n_enc:,}, online, full pool",
            f"{n_enc:,} values",
            t_online,
            t_phe,
            None,
            f"{n_enc / t_online:,.0f}/s online; pool filled by {args.workers} workers in {fmt_t(t_fill)}",
        )
        add_floor(f"encrypt {n_enc:,} (no pool)", n_enc * nwin, t_enc)
        add_floor(f"encrypt {n_enc:,} (online, full pool)", n_enc, t_online)

        # ---- (2b) key owner: CRT encryption vs the public-key DJN path (and HEU's ZPaillier) -----------
        t_owner_tables, _ = timed(lambda: key_owner_tables(sk))
        t_owner, enc_owner, t_djn, _ = side_by_side(
            lambda: encrypt(sk, values), lambda: encrypt(pk, values), max(repeat, 3)
        )
        assert np.array_equal(decrypt(sk, enc_owner[:50]), decrypt(sk, enc[:50]))
        note = f"baseline: public-key DJN path, same run; CRT tables built once in {fmt_t(t_owner_tables)}"
        add(f"key-owner encrypt {n_enc:,}, 1 process", f"{n_enc:,} values", t_owner, t_djn, 1.7, note)
        t_owner_r, _, t_djn_r, _ = side_by_side(
            lambda: randomizers(sk, n_enc), lambda: randomizers(pk, n_enc), max(repeat, 3)
        )
        add(
            f"key-owner randomizers {n_enc:,}",
            f"{n_enc:,} values",
            t_owner_r,
            t_djn_r,
            None,
            "baseline: public-key fixed-base table (what a data party's pool computes)",
        )
        heu_row = heu_encrypt_time(args.bits, n_enc)
        if heu_row is None:
            heu_skipped = "SecretFlow HEU (sf-heu) is not importable: ZPaillier row skipped"
        else:
            heu_skipped = None
            t_heu, heu_note = heu_row
            add(f"key-owner encrypt {n_enc:,} vs HEU", f"{n_enc:,} values", t_owner, t_heu, None, heu_note)
            add(
                f"public-key encrypt {n_enc:,} vs HEU",
                f"{n_enc:,} values",
                t_djn,
                t_heu,
                None,
                "our DJN path (1 process) vs the same HEU run",
            )

        # ---- (3) packed masked decryption of 30 gradient values ----------------------------------
        grad30 = EncryptedVector.concatenate([grad, grad, grad])  # 30 gradient values with the rdot bound
        bound30 = m * prepared.max_abs * 1.0  # |d| <= 1: the bound a party derives

        def engine_round():
            packed, state = mask_and_pack(grad30, bound=bound30)
            return state.unmask(decrypt_packed(sk, packed)), packed

        phe30 = grad30.to_phe()
        t_pack, (vals, packed), t_phe_dec, phe_vals = side_by_side(
            engine_round, lambda: [sk.phe.decrypt(v) for v in phe30], 5
        )
        assert np.allclose(vals, phe_vals, rtol=1e-12, atol=1e-9)
        t_mask, (packed2, _) = timed(lambda: mask_and_pack(grad30, bound=bound30), repeat=3)
        note = (
            f"{len(packed.ciphertexts)} ciphertexts of {packed.slots_per_ciphertext} x {packed.slot_bits}-bit slots; "
            f"mask+pack {fmt_t(t_mask)} of it"
        )
        add("decrypt 30 masked values, packed", "30 values", t_pack, t_phe_dec, 4, note)
        rpool = RandomnessPool(pk)
        rpool.fill(10)
        t_pack_pool, _ = timed(lambda: mask_and_pack(grad30, bound=bound30, randomness=rpool), 1)
        t_pack_pool += t_pack - t_mask  # decryption and unmasking as measured above
        add(
            "  same, randomizers from the pool",
            "30 values",
            t_pack_pool,
            t_phe_dec,
            None,
            "2 randomizers precomputed",
        )
        sizes = packed.group_sizes()
        pack_ops = sum((t - 1) * (packed.slot_bits + 1) + 2 + nwin for t in sizes)
        add_floor("mask+pack 30 values (no pool)", pack_ops, t_mask)

        # ---- wire format ----------------------------------------------------------------------------
        big = EncryptedVector.concatenate([enc] * (30_000 // len(enc)))
        t_to, table30 = timed(big.to_arrow, 3)
        t_from, back = timed(lambda: EncryptedVector.from_arrow(table30, pk), 3)
        assert len(back) == len(big)
        cts = [int(c) for c in big.ciphertexts]
        t_str, strs = timed(lambda: [str(c) for c in cts], 3)
        t_int, _ = timed(lambda: [mpz(int(s)) for s in strs], 3)
        add(
            f"Arrow to+from {len(big):,} ciphertexts",
            f"{table30.nbytes / 1e6:.1f} MB",
            t_to + t_from,
            t_str + t_int,
            None,
            f"to {fmt_t(t_to)}, from+validate {fmt_t(t_from)}; baseline: decimal str/int (phe JSON style)",
        )

        # ---- decryption floor (CRT) ------------------------------------------------------------------
        p2 = sk.p * sk.p
        t_half = modmul_cost(p2, 5_000)
        phe200 = enc[:100].to_phe()
        t_dec, _, t_phe_d200, _ = side_by_side(
            lambda: decrypt(sk, enc[:100]), lambda: [sk.phe.decrypt(v) for v in phe200], 2
        )
        dec_ops = 100 * 2 * int(1.2 * (args.bits // 2))
        floor.append(
            [
                "decrypt 100 (CRT; in half-size modmuls)",
                f"{dec_ops:,}",
                fmt_t(dec_ops * t_half),
                fmt_t(t_dec),
                f"{t_dec / (dec_ops * t_half):.2f}x",
            ]
        )
        add("decrypt 100 (CRT, no packing)", "100 values", t_dec, t_phe_d200, None, "same math as phe (CRT)")

        pool_peak = pool.peak_bytes
        pool.close()

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_mm = min(mm_samples)
    for op, count, engine in floor_items:
        fl = count * t_mm
        floor.insert(len(floor) - 1, [op, f"{count:,}", fmt_t(fl), fmt_t(engine), f"{engine / fl:.2f}x"])
    print_table(
        "Engine vs baseline (ratio = baseline / engine)",
        ["operation", "size", "engine", "baseline (phe)", "ratio", "target", "", "note"],
        rows,
    )
    print_table(
        f"Arithmetic floor (modmul = {t_mm * 1e6:.2f} us at {2 * args.bits} bits, fastest of {len(mm_samples)} "
        f"samples; half-size {t_half * 1e6:.2f} us; engine squarings inside powmod are cheaper than a modmul)",
        ["operation", "modmuls needed", "floor", "engine", "engine / floor"],
        floor,
    )
    print(
        f"\nMemory: fixed-base table {table.memory_bytes() / 2**20:.1f} MiB (per process that encrypts); "
        f"randomness pool peak {pool_peak / 2**20:.1f} MiB for {n_enc:,} randomizers "
        f"({pool_peak / max(n_enc, 1):.0f} B each); process peak RSS {rss / 1024:.0f} MiB "
        f"(+{(rss - rss0) / 1024:.0f} MiB after key generation)."
    )
    if heu_skipped:
        print(heu_skipped)
    print(f"Total benchmark time {time.perf_counter() - started:.1f} s.")


if __name__ == "__main__":
    main()
