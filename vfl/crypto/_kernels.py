"""Big-integer kernels of the Paillier engine: plain functions over ``gmpy2.mpz`` lists.

Everything here is a pure function of its arguments (plus ``secrets`` for fresh randomness), imports
nothing heavier than gmpy2 and numpy, and is picklable by reference, so the same function runs in the
calling process or on a worker of :class:`vfl.crypto.pool.WorkerPool` (and could run on a Dask worker).

Cost comments count *modular multiplications* ("modmul") modulo ``n^2`` -- the unit in which the
benchmark states the arithmetic floor. A 4096-bit modmul is ~7-9 us here; a squaring done inside
``gmpy2.powmod`` is ~5 us (GMP's REDC loop, no Python overhead).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

import gmpy2
import numpy as np
from gmpy2 import mpz

ONE = mpz(1)


# ---------------------------------------------------------------------------------------------
# Fixed-base window table (DJN randomness h_s^a)
# ---------------------------------------------------------------------------------------------


def build_fixed_base_table(base: mpz, modulus: mpz, exponent_bits: int, window: int) -> list[list[mpz]]:
    """``rows[i][d] = base^(d * 2^(window*i)) mod modulus`` for ``d`` in ``0 .. 2^window - 1``.

    Cost: ``ceil(exponent_bits / window) * (2^window - 1)`` modmuls, once per key and process.
    With the table, ``base^a`` for any ``a < 2^exponent_bits`` is one table lookup per window and
    ``ceil(exponent_bits / window) - 1`` modmuls, with no squarings at all.
    """
    n_windows = -(-exponent_bits // window)
    size = 1 << window
    rows: list[list[mpz]] = []
    b = mpz(base) % modulus
    for _ in range(n_windows):
        row = [ONE, b]
        cur = b
        for _ in range(size - 2):
            cur = cur * b % modulus  # 1 modmul per table entry
            row.append(cur)
        rows.append(row)
        b = cur * b % modulus  # base^(2^window) of this row = generator of the next row
    return rows


@functools.lru_cache(maxsize=4)
def cached_fixed_base_table(base: mpz, modulus: mpz, exponent_bits: int, window: int) -> list[list[mpz]]:
    """Per-process memo of :func:`build_fixed_base_table` (a pure function; used by pool workers)."""
    return build_fixed_base_table(base, modulus, exponent_bits, window)


def fixed_base_powers(
    rows: list[list[mpz]], modulus: mpz, exponent_bits: int, window: int, count: int
) -> list[mpz]:
    """``count`` values ``base^a`` with fresh uniform ``a in [0, 2^exponent_bits)`` from ``secrets``.

    Cost per value: ``ceil(exponent_bits/window) - 1`` modmuls (41 for a 512-bit exponent and 12-bit
    windows, 102 for a 1024-bit exponent and 10-bit windows), no squarings.

    The window digits of a uniform exponent are independent and uniform, so they are drawn directly:
    ``count * windows`` uniform 16-bit words from ``secrets`` masked to ``window`` bits (the top digit
    to the bits left), one vectorized numpy step instead of a shift and mask per digit. A zero digit
    picks ``rows[i][0] = 1``, a multiplication that costs almost nothing; skipping the test keeps the
    loop at one modmul per iteration.
    """
    if count <= 0:
        return []
    return fixed_base_from_digits(rows, modulus, window_digits(len(rows), window, exponent_bits, count))


def fixed_base_from_digits(rows: list[list[mpz]], modulus: mpz, digits: Sequence[Sequence[int]]) -> list[mpz]:
    """``prod_i rows[i][d_i] mod modulus`` for each digit vector: ``base^a`` for ``a = sum_i d_i 2^(w i)``."""
    first, rest = rows[0], rows[1:]
    out: list[mpz] = []
    append = out.append
    for ds in digits:
        acc = first[ds[0]]
        for row, d in zip(rest, ds[1:], strict=True):  # ONE modmul per window after the first
            acc = acc * row[d] % modulus
        append(acc)
    return out


def worker_randomness(h_s: mpz, n_square: mpz, exponent_bits: int, window: int, count: int) -> list[mpz]:
    """Worker entry point: ``count`` fresh DJN randomizers ``h_s^a mod n^2`` (table cached per process)."""
    rows = cached_fixed_base_table(h_s, n_square, exponent_bits, window)
    return fixed_base_powers(rows, n_square, exponent_bits, window, count)


# ---------------------------------------------------------------------------------------------
# Key owner: the same randomizers h_s^a, computed mod p^2 and mod q^2 (CRT)
# ---------------------------------------------------------------------------------------------
#
# Mod p^2, h_s = (h^q)^p is a p-th power, so every table entry T = h_s^(d 2^(w i)) mod p^2 lies in the
# subgroup of order p - 1 and factors as T = e (1 + p u) mod p^2 with e = T mod p and
# u = (T div p) e^-1 mod p. Products then split: prod T_k = (prod e_k mod p^2) (1 + p sum u_k) mod
# p^2. The key owner's table stores e as half-width integers and u as 32-bit limbs in one contiguous
# numpy array (the sums of u are gathered and added for a whole block of randomizers at once, and
# do not thrash the cache the way a second big-integer lookup per window would). A randomizer costs
# one (2048-bit x 1024-bit) mod 2048-bit step per window (~0.65-0.9 us at 2048 bits, against ~3.4 us for a
# 4096-bit modmul of the public table), twice (p and q), then one recombination. The randomizer is
# exactly h_s^a mod n^2: only the arithmetic differs, not the distribution.

CrtTable = tuple[list[list[mpz]], np.ndarray]
"""A key owner's table for one prime: ``(e_rows, u_limbs)`` with ``T_i[d] = e_i[d] (1 + p u_i[d]) mod p^2``
and ``u_i[d] = sum_j u_limbs[i, d, j] 2^(32 j)`` (uint32 limbs, little-endian)."""

_U_BLOCK = 128  # randomizers per vectorized gather of u limbs (~2 MB of temporaries at 2048 bits)


def build_crt_table(h_s: mpz, prime: mpz, exponent_bits: int, window: int) -> CrtTable:
    """The ``(e, u)`` table of ``h_s mod prime^2`` (see the comment above this function).

    Cost: :func:`build_fixed_base_table` at half the operand size plus a batch inversion mod
    ``prime`` per row (~0.9 s for both primes of a 2048-bit key with w = 10).
    """
    square = prime * prime
    rows = build_fixed_base_table(h_s % square, square, exponent_bits, window)
    limbs = -(-int(prime).bit_length() // 32)
    e_rows: list[list[mpz]] = []
    u_bytes = bytearray()
    for row in rows:
        es = [t % prime for t in row]
        invs = batch_invert(es, prime)  # every e is a unit: T is a unit mod prime^2
        e_rows.append(es)
        for t, inv in zip(row, invs, strict=True):
            u_bytes += int((t // prime) * inv % prime).to_bytes(4 * limbs, "little")
    u_limbs = np.frombuffer(bytes(u_bytes), dtype="<u4").reshape(len(rows), len(rows[0]), limbs)
    return e_rows, u_limbs


def build_crt_tables(h_s: mpz, p: mpz, q: mpz, exponent_bits: int, window: int) -> tuple[CrtTable, CrtTable]:
    """The key owner's tables for ``p`` and ``q``."""
    return build_crt_table(h_s, p, exponent_bits, window), build_crt_table(h_s, q, exponent_bits, window)


@functools.lru_cache(maxsize=2)
def cached_crt_tables(h_s: mpz, p: mpz, q: mpz, exponent_bits: int, window: int) -> tuple[CrtTable, CrtTable]:
    """Per-process memo of :func:`build_crt_tables` (a pure function; used by pool workers)."""
    return build_crt_tables(h_s, p, q, exponent_bits, window)


def window_digits(n_windows: int, window: int, exponent_bits: int, count: int) -> list[list[int]]:
    """Window digits of ``count`` fresh uniform exponents ``a in [0, 2^exponent_bits)`` from ``secrets``:
    independent uniform digits, the top one truncated to the bits left (see :func:`fixed_base_powers`).
    The public-key and the key owner's randomizers both draw their exponents here."""
    return window_digit_array(n_windows, window, exponent_bits, count).tolist()


def window_digit_array(n_windows: int, window: int, exponent_bits: int, count: int) -> np.ndarray:
    """:func:`window_digits` as a ``(count, n_windows)`` uint16 array."""
    if not 1 <= window <= 16 or n_windows * window < exponent_bits:
        raise ValueError(f"a {n_windows}-row table of {window}-bit windows cannot cover {exponent_bits} bits")
    top_bits = exponent_bits - window * (n_windows - 1)
    words = np.frombuffer(secrets.token_bytes(2 * n_windows * count), dtype=np.uint16).reshape(
        count, n_windows
    )
    digits = words & np.uint16((1 << window) - 1)
    digits[:, -1] &= np.uint16((1 << top_bits) - 1)
    return digits


def _u_sums(u_limbs: np.ndarray, digits: np.ndarray) -> list[int]:
    """``sum_i u_i[d_i]`` for every digit row, by gathering and adding the uint32 limbs in numpy."""
    n_windows, _, limbs = u_limbs.shape
    windows = np.arange(n_windows)
    out: list[int] = []
    for start in range(0, len(digits), _U_BLOCK):
        block = digits[start : start + _U_BLOCK]
        sums = u_limbs[windows, block].sum(axis=1, dtype=np.uint64)  # (block, limbs), each < 2^40
        wide = np.zeros((len(block), limbs + 2), dtype=np.uint64)
        wide[:, :limbs] = sums
        for j in range(limbs + 1):  # carry propagation, vectorized over the block
            wide[:, j + 1] += wide[:, j] >> np.uint64(32)
            wide[:, j] &= np.uint64(0xFFFFFFFF)
        raw = wide.astype("<u4").tobytes()
        width = 4 * (limbs + 2)
        out.extend(int.from_bytes(raw[i * width : (i + 1) * width], "little") for i in range(len(block)))
    return out


def crt_split_powers(table: CrtTable, prime: mpz, digits: np.ndarray) -> tuple[list[mpz], list[int]]:
    """For each exponent (a row of window ``digits``): ``(A, U)`` with ``h_s^a = A (1 + p U) mod p^2``.

    ``A = prod e_k mod p^2`` (one half-by-full-width step per window after the first) and
    ``U = sum u_k`` (unreduced; the caller reduces it mod ``p``).
    """
    e_rows, u_limbs = table
    square = prime * prime
    first, rest = e_rows[0], e_rows[1:]
    out_a: list[mpz] = []
    append = out_a.append
    for ds in digits.tolist():
        acc = first[ds[0]]
        for es, d in zip(rest, ds[1:], strict=True):
            acc = acc * es[d] % square
        append(acc)
    return out_a, _u_sums(u_limbs, digits)


def _crt_finish(
    a_values: Sequence[mpz], u_values: Sequence[mpz], prime: mpz, shifts: Sequence[mpz] | None
) -> list[mpz]:
    """``A (1 + p ((U + shift) mod p)) mod p^2 = A + p (A ((U + shift) mod p) mod p)`` per value."""
    square = prime * prime
    out = []
    for i, (a, u) in enumerate(zip(a_values, u_values, strict=True)):
        if shifts is not None:
            u += shifts[i]
        x = a + prime * (a * (u % prime) % prime)
        out.append(x - square if x >= square else x)
    return out


def crt_combine(residues_p: Sequence[mpz], residues_q: Sequence[mpz], p: mpz, q: mpz) -> list[mpz]:
    """Garner: the ``x mod n^2`` with ``x = x_p mod p^2`` and ``x = x_q mod q^2`` (one half-size modmul)."""
    p2, q2 = p * p, q * q
    inv = gmpy2.invert(p2, q2)
    return [xp + p2 * ((xq - xp) * inv % q2) for xp, xq in zip(residues_p, residues_q, strict=True)]


def crt_from_digits(
    tables: tuple[CrtTable, CrtTable],
    p: mpz,
    q: mpz,
    digits: np.ndarray | Sequence[Sequence[int]],
    plaintexts: Sequence[mpz] | None = None,
) -> list[mpz]:
    """``h_s^a mod n^2`` for the exponents given by ``digits`` or, with ``plaintexts``, the DJN
    ciphertexts ``(1 + m n) h_s^a mod n^2``: mod ``p^2``, ``1 + m n = 1 + p (m q mod p)``, which just
    adds ``m q`` to ``U``."""
    (tp, tq) = tables
    digits = np.asarray(digits, dtype=np.int64).reshape(-1, len(tp[0]))
    ap, up = crt_split_powers(tp, p, digits)
    aq, uq = crt_split_powers(tq, q, digits)
    shift_p = None if plaintexts is None else [m * q for m in plaintexts]
    shift_q = None if plaintexts is None else [m * p for m in plaintexts]
    return crt_combine(_crt_finish(ap, up, p, shift_p), _crt_finish(aq, uq, q, shift_q), p, q)


def crt_randomizers(h_s: mpz, p: mpz, q: mpz, exponent_bits: int, window: int, count: int) -> list[mpz]:
    """Worker entry point: ``count`` fresh DJN randomizers ``h_s^a mod n^2``, same distribution as
    :func:`worker_randomness` (uniform ``a`` of ``exponent_bits`` bits), computed with the factors.

    The arguments include the secret primes: run it only on the key owner's own workers.
    """
    if count <= 0:
        return []
    tables = cached_crt_tables(h_s, p, q, exponent_bits, window)
    digits = window_digit_array(len(tables[0][0]), window, exponent_bits, count)
    return crt_from_digits(tables, p, q, digits)


def crt_encrypt(
    plaintexts: list[mpz], h_s: mpz, p: mpz, q: mpz, exponent_bits: int, window: int
) -> list[mpz]:
    """Worker entry point: key-owner DJN encryption of plaintexts in ``[0, n)`` (secret primes: own
    workers only). Same ciphertexts as :func:`djn_combine` with a randomizer ``h_s^a mod n^2``."""
    if not plaintexts:
        return []
    tables = cached_crt_tables(h_s, p, q, exponent_bits, window)
    digits = window_digit_array(len(tables[0][0]), window, exponent_bits, len(plaintexts))
    return crt_from_digits(tables, p, q, digits, plaintexts)


# ---------------------------------------------------------------------------------------------
# Encryption / decryption
# ---------------------------------------------------------------------------------------------


def djn_combine(plaintexts: Sequence[mpz], randomizers: Sequence[mpz], n: mpz, n_square: mpz) -> list[mpz]:
    """``c = (1 + m n) * r mod n^2``, computed as ``r + n * (m r mod n) mod n^2``.

    Both forms are equal because ``(1 + m n) r = r + n (m r) (mod n^2)`` and ``n * x mod n^2`` depends
    only on ``x mod n``. Cost per value: about one modmul (a 2048x4096-bit product reduced mod ``n``,
    a 2048x2048 product, one add and one conditional subtraction) -- the *online* cost of encryption
    once the randomizer ``r = h_s^a`` is precomputed.
    """
    out = []
    for m, r in zip(plaintexts, randomizers, strict=True):
        c = r + n * (m * r % n)
        if c >= n_square:
            c -= n_square
        out.append(c)
    return out


def worker_encrypt(plaintexts: list[mpz], n: mpz, h_s: mpz, exponent_bits: int, window: int) -> list[mpz]:
    """Worker entry point: DJN encryption of a chunk, randomizers drawn in the worker."""
    n_square = n * n
    rands = worker_randomness(h_s, n_square, exponent_bits, window, len(plaintexts))
    return djn_combine(plaintexts, rands, n, n_square)


def multiply_randomizers(ciphertexts: Sequence[mpz], randomizers: Sequence[mpz], n_square: mpz) -> list[mpz]:
    """Re-randomization: ``c * h_s^a mod n^2`` -- one modmul per ciphertext."""
    return [c * r % n_square for c, r in zip(ciphertexts, randomizers, strict=True)]


def worker_rerandomize(
    ciphertexts: list[mpz], n: mpz, h_s: mpz, exponent_bits: int, window: int
) -> list[mpz]:
    """Worker entry point: re-randomize a chunk with randomizers drawn in the worker."""
    n_square = n * n
    rands = worker_randomness(h_s, n_square, exponent_bits, window, len(ciphertexts))
    return multiply_randomizers(ciphertexts, rands, n_square)


def crt_decrypt(ciphertexts: list[mpz], p: mpz, q: mpz, hp: mpz, hq: mpz, p_inverse: mpz) -> list[mpz]:
    """Raw Paillier decryption with CRT (python-paillier's math), result in ``[0, n)``.

    Per ciphertext: ``c^(p-1) mod p^2`` and ``c^(q-1) mod q^2`` (two half-size exponentiations,
    ~1024 squarings each at 2048 bits for a 2048-bit key, done in C by ``powmod_base_list`` without
    the GIL), then ``L_p(x) = (x - 1) / p``, ``m_p = L_p * hp mod p``, likewise for ``q``, and
    Garner's CRT ``m = m_p + ((m_q - m_p) p^-1 mod q) p``.
    """
    if not ciphertexts:
        return []
    xp = gmpy2.powmod_base_list(ciphertexts, p - 1, p * p)
    xq = gmpy2.powmod_base_list(ciphertexts, q - 1, q * q)
    out = []
    for a, b in zip(xp, xq, strict=True):
        mp = (a - 1) // p * hp % p
        mq = (b - 1) // q * hq % q
        out.append(mp + ((mq - mp) * p_inverse % q) * p)
    return out


# ---------------------------------------------------------------------------------------------
# Vector helpers
# ---------------------------------------------------------------------------------------------


def batch_invert(values: Sequence[mpz], modulus: mpz) -> list[mpz]:
    """Montgomery's trick: all inverses for ``3 (len - 1)`` modmuls and ONE modular inversion.

    Raises ``ZeroDivisionError`` if some value is not invertible (a ciphertext sharing a factor with n).
    """
    count = len(values)
    if count == 0:
        return []
    prefix = [values[0]]
    for v in values[1:]:
        prefix.append(prefix[-1] * v % modulus)  # 1 modmul
    inv = gmpy2.invert(prefix[-1], modulus)  # the single inversion
    out: list[mpz] = [ONE] * count
    for i in range(count - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % modulus  # 1 modmul
        inv = inv * values[i] % modulus  # 1 modmul
    out[0] = inv
    return out


def product(values: Sequence[mpz], modulus: mpz) -> mpz:
    """``prod values mod modulus``: ``len - 1`` modmuls."""
    acc = ONE
    first = True
    for v in values:
        if first:
            acc, first = v, False
        else:
            acc = acc * v % modulus
    return acc


def signed_powers(ciphertexts: Sequence[mpz], exponents: Sequence[int], n_square: mpz) -> list[mpz]:
    """``c_i^(k_i) mod n^2`` for signed integer ``k_i`` (plaintext multiplication by ``k_i``).

    Cost: one ``powmod`` with a ``|k_i|``-bit exponent each (~|k_i| bits of squarings), plus a batch
    inversion (3 modmuls each) for the negative ones -- never an exponent of ``n`` bits.
    """
    out = [gmpy2.powmod(c, abs(k), n_square) for c, k in zip(ciphertexts, exponents, strict=True)]
    neg = [i for i, k in enumerate(exponents) if k < 0]
    if neg:
        inv = batch_invert([out[i] for i in neg], n_square)
        for i, v in zip(neg, inv, strict=True):
            out[i] = v
    return out


# ---------------------------------------------------------------------------------------------
# Bucket (Pippenger) multi-exponentiation
# ---------------------------------------------------------------------------------------------


def bucket_multiexp(ciphertexts: Sequence[mpz], digits: np.ndarray, window: int, n_square: mpz) -> list[mpz]:
    """For each column ``j``: ``prod_i c_i^(e_ij) mod n^2`` with ``e_ij = sum_t digits[j, t, i] 2^(window t)``.

    ``digits`` has shape ``(columns, windows, rows)`` and holds non-negative window digits (the
    offset that makes exponents non-negative is applied by the caller, once for all columns).

    Per column and window: one modmul per row with a non-zero digit, minus one per non-empty bucket
    (bucket accumulation), then ``<= 2 (2^window - 1)`` modmuls for the running-sum combination
    ``prod_v B_v^v``; windows are joined Horner-style with ``window`` squarings each. For 10,000 rows,
    16-bit exponents and 8-bit windows that is ~21,000 modmuls per column, about two per term, where
    one exponentiation per term (the naive loop) costs ~20 squarings and modmuls even for 16-bit
    exponents.
    """
    size = 1 << window
    shift = mpz(1) << window
    results: list[mpz] = []
    n_cols, n_windows, _ = digits.shape
    for j in range(n_cols):
        result = None
        for t in range(n_windows - 1, -1, -1):
            buckets: list[mpz | None] = [None] * size
            for c, d in zip(ciphertexts, digits[j, t].tolist(), strict=True):
                if d:
                    b = buckets[d]
                    buckets[d] = c if b is None else b * c % n_square  # 1 modmul per row
            running = None
            acc = None
            for v in range(size - 1, 0, -1):  # prod_v B_v^v as a running product: 2 modmuls per bucket
                b = buckets[v]
                if b is not None:
                    running = b if running is None else running * b % n_square
                if running is not None:
                    acc = running if acc is None else acc * running % n_square
            if result is not None:
                result = gmpy2.powmod(result, shift, n_square)  # `window` squarings
            if acc is not None:
                result = acc if result is None else result * acc % n_square
        results.append(ONE if result is None else result)
    return results


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


def horner_pack(ciphertexts: Sequence[mpz], slot_bits: int, n_square: mpz) -> mpz:
    """``C = (((c_1)^(2^S) c_2)^(2^S) c_3 ...)``: plaintext ``sum_j m_j 2^(S (t-1-j))``.

    Cost: ``S`` squarings (inside ``powmod``) and one modmul per packed value after the first.
    """
    shift = mpz(1) << slot_bits
    acc = ciphertexts[0]
    for c in ciphertexts[1:]:
        acc = gmpy2.powmod(acc, shift, n_square) * c % n_square
    return acc


def horner_pack_many(groups: Sequence[Sequence[mpz]], slot_bits: int, n_square: mpz) -> list[mpz]:
    """:func:`horner_pack` over several groups (the unit of work sent to a pool worker)."""
    return [horner_pack(g, slot_bits, n_square) for g in groups]


def warm_table(h_s: mpz, n_square: mpz, exponent_bits: int, window: int, hold_seconds: float) -> int:
    """Worker warm-up: build (and cache) the fixed-base table, then hold the worker briefly so that
    the other warm-up tasks land on other workers. Returns the worker's process id."""
    import os
    import time

    cached_fixed_base_table(h_s, n_square, exponent_bits, window)
    time.sleep(hold_seconds)
    return os.getpid()


def warm_crt_tables(h_s: mpz, p: mpz, q: mpz, exponent_bits: int, window: int, hold_seconds: float) -> int:
    """Key-owner worker warm-up: build (and cache) the CRT tables; see :func:`warm_table`."""
    import os
    import time

    cached_crt_tables(h_s, p, q, exponent_bits, window)
    time.sleep(hold_seconds)
    return os.getpid()
