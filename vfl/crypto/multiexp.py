"""``X^T [[d]]`` by bucket (Pippenger) multi-exponentiation over quantized columns.

**Quantization.** Column ``j`` of ``X`` becomes signed ``bits``-bit integers ``q_ij = round(x_ij 2^s_j)``
with the largest power-of-two scale ``2^s_j`` such that ``max_i |x_ij| 2^s_j <= 2^(bits-1) - 1``
(``s_j`` is capped at 64, and all-zero columns use ``s_j = 0``). So each entry is off by at most
``2^-(s_j+1) <= max_i |x_ij| / (2^bits - 2)``, and output ``j`` is off by at most
``2^-(s_j+1) * sum_i |d_i|`` (relative to the exact ``X^T d``; ``d``'s own encoding is used exactly).
With 16 bits that is ~1.5e-5 of the column's largest value per term. The per-column power-of-two
scales are turned into ONE power-of-16 output exponent ``d.exponent - F`` with ``F = ceil(max_j
s_j / 4)`` by ``4F - s_j`` squarings of output ``j`` (multiplying its plaintext by ``2^(4F - s_j)``).

**Offset.** Bucket exponents must be non-negative. For columns with a negative entry we use
``x'_ij = q_ij + 2^(bits-1) >= 0`` and ``result_j = prod_i c_i^(x'_ij) * (prod_i c_i)^(-2^(bits-1))``;
``P = prod_i c_i`` (``m - 1`` modmuls), its inverse (ONE inversion) and ``P^(-2^(bits-1))`` (``bits - 1``
squarings) are shared by all columns. Columns without negative entries (intercepts, indicators) skip
the offset.

**Digits.** ``x'`` is split into ``ceil(bits / window)`` digits of ``window`` bits, computed once by
:func:`prepare_matrix` and kept as a ``(k, windows, m)`` uint16 array, so each mini-batch only indexes
the digit array with its row positions. The window is chosen to minimize
``windows * (m + 2^(window+1))``: 8 bits for 16-bit columns and 500 to 30,000 rows.

**Cost** per column: ``windows * (m + 2 * 2^window)`` modmuls plus ``window`` squarings per extra window
-- ~21,000 for ``m = 10,000`` (two per term) versus one exponentiation per term in the naive loop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfl.crypto import _kernels
from vfl.errors import CryptoError, IntegrityError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vfl.crypto.keys import PublicKey
    from vfl.crypto.pool import WorkerPool

MIN_BITS, MAX_BITS = 2, 20
MAX_SCALE_BITS = 64
TERM_WEIGHT = 0.015
"""One (row, column) term costs ~2 modmuls, ~1/70 of an encryption (the WorkerPool's work unit)."""


def choose_window(bits: int, rows: int) -> int:
    """The digit window minimizing ``ceil(bits/w) * (rows + 2^(w+1))`` (bucket work + running sums)."""
    best_w, best_cost = 1, math.inf
    for w in range(1, min(bits, 16) + 1):
        cost = -(-bits // w) * (rows + (1 << (w + 1))) + w * (-(-bits // w) - 1)
        if cost < best_cost:
            best_w, best_cost = w, cost
    return best_w


@dataclass(frozen=True, eq=False)
class PreparedMatrix:
    """A plaintext ``(m, k)`` matrix quantized and split into bucket digits once, reusable per batch.

    ``quantized[i, j] * 2**-shifts[j]`` is the value actually multiplied; ``entry_error[j]`` bounds
    its distance to ``X[i, j]``.
    """

    shape: tuple[int, int]
    bits: int
    window: int
    shifts: np.ndarray = field(repr=False)
    quantized: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    digits: np.ndarray = field(repr=False)

    @property
    def n_windows(self) -> int:
        return int(self.digits.shape[1])

    @property
    def exponent_shift(self) -> int:
        """``F``: the output exponent is ``d.exponent - F``."""
        top = int(self.shifts.max()) if self.shifts.size else 0
        return max(0, -(-top // 4))

    @property
    def squarings(self) -> np.ndarray:
        """Per-column squarings ``4F - s_j`` that align outputs to the common exponent."""
        return 4 * self.exponent_shift - self.shifts

    @property
    def entry_error(self) -> np.ndarray:
        """Per column, the maximum ``|x_ij - q_ij 2^-s_j|`` (``2^-(s_j+1)``)."""
        return np.ldexp(1.0, -(self.shifts.astype(np.int64) + 1))

    @functools.cached_property
    def dequantized(self) -> np.ndarray:
        """The float matrix the engine effectively multiplies by (``q_ij 2^-s_j``), computed once.

        Parties should use it for their own plaintext products too (e.g. ``u = X[B] w``), so that the
        encrypted and plaintext sides see the same features.
        """
        return np.ldexp(self.quantized.astype(np.float64), -self.shifts.astype(np.int64)[None, :])

    @functools.cached_property
    def max_abs(self) -> float:
        """``max |dequantized|`` over the whole matrix: with ``|d_i| <= D``, every output of ``rdot``
        over ``m`` rows is bounded by ``m * max_abs * D`` (use it as ``mask_and_pack(bound=...)``)."""
        return float(np.max(np.abs(self.dequantized))) if self.dequantized.size else 0.0

    def output_error(self, d_abs_sum: float) -> np.ndarray:
        """Per output, the bound ``2^-(s_j+1) * sum_i |d_i|`` on the quantization error."""
        return self.entry_error * d_abs_sum

    def select(self, rows: np.ndarray | Sequence[int] | slice | None) -> tuple[np.ndarray, np.ndarray]:
        """``(digits, quantized)`` restricted to ``rows`` (all rows if None)."""
        if rows is None:
            return self.digits, self.quantized
        if isinstance(rows, slice):
            return self.digits[:, :, rows], self.quantized[rows]
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.intp, copy=False)
        if idx.size and (idx.min() < -self.shape[0] or idx.max() >= self.shape[0]):
            raise CryptoError(f"row index out of range for a prepared matrix with {self.shape[0]} rows")
        return self.digits[:, :, idx], self.quantized[idx]

    def batch_digits(
        self, rows: np.ndarray | Sequence[int] | slice | None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """``(digits, quantized, window)`` of ``rows``: the digits cut again at the best window for that
        many rows when it is smaller than the matrix's (chosen for all its rows). A mini-batch of 512
        rows of a 160,000-row matrix: 6-bit windows, not 16 (whose 2 x 65,535 running-sum modmuls per
        column would be 64x the batch's own work). The product is the same: only the digits differ."""
        digits, q = self.select(rows)
        best = choose_window(self.bits, max(q.shape[0], 1))
        if rows is None or best >= self.window:
            return digits, q, self.window
        return window_digits(offset_exponents(q, self.offsets, self.bits), self.bits, best), q, best

    def modmul_count(self, rows: int) -> int:
        """Modmuls (including squarings) ``rdot`` needs for ``rows`` rows, without re-randomization."""
        k = self.shape[1]
        per_col = self.n_windows * (rows + 2 * ((1 << self.window) - 1)) + self.window * (self.n_windows - 1)
        total = k * per_col + int(self.squarings.sum()) + int(self.offsets.sum())
        if self.offsets.any():
            total += (rows - 1) + (self.bits - 1)
        return total


def prepare_matrix(
    matrix: np.ndarray,
    bits: int = 16,
    window: int | None = None,
    rows_hint: int | None = None,
    *,
    workers: WorkerPool | None = None,
) -> PreparedMatrix:
    """Quantize ``matrix`` (m, k) column-wise to signed ``bits``-bit fixed point and precompute digits.

    ``window`` defaults to :func:`choose_window` for ``rows_hint`` rows (default ``m``); reuse the
    result for every epoch and mini-batch over the same data. ``workers`` is accepted for symmetry
    with the other heavy operations but unused: this is one vectorized numpy pass (~4 ms for 10^5
    entries).
    """
    del workers
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise CryptoError(f"rdot needs a 2-D matrix, got shape {x.shape}")
    if not (MIN_BITS <= bits <= MAX_BITS):
        raise CryptoError(f"quantization bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    if not np.all(np.isfinite(x)):
        raise CryptoError("the matrix contains NaN or infinite values; impute and clip before training")
    m, k = x.shape
    limit = (1 << (bits - 1)) - 1
    col_max = np.max(np.abs(x), axis=0) if m else np.zeros(k)
    shifts = np.zeros(k, dtype=np.int64)
    for j in range(k):
        top = float(col_max[j])
        if top == 0.0:
            continue
        s = (limit.bit_length() - 1) - math.frexp(top)[1]  # within 1 of the answer; no overflow
        while math.ldexp(top, s) > limit:
            s -= 1
        while math.ldexp(top, s + 1) <= limit:
            s += 1
        shifts[j] = min(s, MAX_SCALE_BITS)
    q = np.rint(np.ldexp(x, shifts[None, :])).astype(np.int64) if m else np.zeros((0, k), dtype=np.int64)
    offsets = (q < 0).any(axis=0) if m else np.zeros(k, dtype=bool)
    shifted = offset_exponents(q, offsets, bits)
    w = window if window is not None else choose_window(bits, rows_hint if rows_hint else max(m, 1))
    if not 1 <= w <= 16:
        raise CryptoError(f"window must be 1..16 bits, got {w}")
    digits = window_digits(shifted, bits, w)
    return PreparedMatrix((m, k), bits, w, shifts, q.astype(np.int32), offsets, digits)


def offset_exponents(q: np.ndarray, offsets: np.ndarray, bits: int) -> np.ndarray:
    """Quantized entries ``(m, k)`` as non-negative exponents: a column with negative entries (``offsets``)
    shifted up by ``2^(bits - 1)`` (``rdot`` removes the shift with one shared product)."""
    return q.astype(np.int64) + np.where(offsets, 1 << (bits - 1), 0)[None, :]


def window_digits(exponents: np.ndarray, bits: int, window: int) -> np.ndarray:
    """Non-negative ``bits``-bit exponents ``(m, k)`` -> their ``window``-bit digits ``(k, windows, m)``."""
    m, k = exponents.shape
    n_windows = -(-bits // window)
    mask = (1 << window) - 1
    digits = np.empty((k, n_windows, m), dtype=np.uint16)
    for t in range(n_windows):
        digits[:, t, :] = ((exponents >> (window * t)) & mask).T
    return digits


def rdot_ciphertexts(
    ciphertexts: list[mpz],
    public_key: PublicKey,
    matrix: np.ndarray | PreparedMatrix,
    rows: np.ndarray | Sequence[int] | slice | None = None,
    bound: int | None = None,
    *,
    bits: int = 16,
    workers: WorkerPool | None = None,
) -> tuple[list[mpz], int, int | None]:
    """``X[rows]^T [[d]]`` over raw ciphertexts (see the module docstring), not re-randomized.

    Returns ``(ciphertexts, exponent_shift, bound)``: the output exponent is ``d.exponent -
    exponent_shift`` and ``bound`` is the output encoding bound if ``bound`` (of ``d``) is known.
    :meth:`vfl.crypto.vector.EncryptedVector.rdot` wraps it (this module knows no ciphertext type,
    which keeps the module graph acyclic).
    """
    prepared = matrix if isinstance(matrix, PreparedMatrix) else prepare_matrix(matrix, bits)
    digits, q, window = prepared.batch_digits(rows)
    m, k = q.shape
    cts = ciphertexts
    if m != len(cts):
        raise CryptoError(
            f"rdot: the encrypted vector has {len(cts)} elements but the selected matrix rows are {m}"
        )
    n2 = public_key.n_square
    if m == 0 or k == 0:
        raw = [mpz(1)] * k
        shared = None
    else:
        raw, shared = _bucket_parallel(cts, digits, window, prepared, n2, workers)
    if prepared.offsets.any() and m:
        if shared is None:
            shared = _kernels.product(cts, n2)  # m - 1 modmuls
        try:
            inv = gmpy2.invert(shared, n2)  # the ONE inversion, shared by all columns
        except ZeroDivisionError:
            raise IntegrityError("rdot: a ciphertext is not invertible mod n^2 (malformed input)") from None
        correction = gmpy2.powmod(inv, mpz(1) << (prepared.bits - 1), n2)  # bits - 1 squarings
        raw = [
            r * correction % n2 if off else r for r, off in zip(raw, prepared.offsets.tolist(), strict=True)
        ]
    squarings = prepared.squarings.tolist()
    out = [gmpy2.powmod(r, mpz(1) << s, n2) if s else r for r, s in zip(raw, squarings, strict=True)]
    out_bound = None
    if bound is not None:
        col_abs = np.abs(q.astype(np.int64)).sum(axis=0).tolist() if m else [0] * k
        out_bound = (
            max((int(a) << int(s) for a, s in zip(col_abs, squarings, strict=True)), default=0) * bound
        )
    return out, prepared.exponent_shift, out_bound


def _bucket_parallel(
    cts: list[mpz], digits: np.ndarray, w: int, prepared: PreparedMatrix, n2: mpz, workers: WorkerPool | None
) -> tuple[list[mpz], mpz | None]:
    """Run the bucket kernel in-process or split over workers (columns if enough, else rows).

    Returns the per-column products and, when computed on the side, ``prod c_i`` for the offset.
    """
    k, _, m = digits.shape
    if workers is None or not workers.should_split(m * k, weight=TERM_WEIGHT):
        return _kernels.bucket_multiexp(cts, digits, w, n2), None
    shared = None
    if k >= workers.workers:
        groups = np.array_split(np.arange(k), workers.workers)
        futures = [workers.submit(_kernels.bucket_multiexp, cts, digits[g], w, n2) for g in groups if g.size]
        if prepared.offsets.any():
            shared = _kernels.product(cts, n2)  # the calling process works while workers do
        return [r for fut in futures for r in fut.result()], shared
    bounds = [m * i // workers.workers for i in range(workers.workers + 1)]
    futures = [
        workers.submit(
            _kernels.bucket_multiexp,
            cts[bounds[i] : bounds[i + 1]],
            digits[:, :, bounds[i] : bounds[i + 1]],
            w,
            n2,
        )
        for i in range(workers.workers)
        if bounds[i + 1] > bounds[i]
    ]
    if prepared.offsets.any():
        shared = _kernels.product(cts, n2)
    parts = [fut.result() for fut in futures]
    combined = parts[0]
    for part in parts[1:]:
        combined = [a * b % n2 for a, b in zip(combined, part, strict=True)]
    return combined, shared
