"""The heavy steps of an encrypted cross-tab (:mod:`vfl.analytics.crosstab`): encrypting rows, folding them.

* the host encrypts its packed rows with its own key on the key owner's CRT path, part by part on its
  workers (:func:`encrypt_parts`: the next parts compute while one is sent);
* the guest folds the rows by its own cell (:func:`fold_kernel`: one modmul per row and block, a bucket
  multi-exponentiation per guest cell and metric) part by part as they arrive, and multiplies the
  partial accumulators together (:func:`combine`).

Worker tasks are plain functions of integers and arrays (no closures); :func:`timed_call` wraps one so
that it reports its CPU seconds.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gmpy2
import numpy as np
import pandas as pd
from gmpy2 import mpz

from vfl.analytics.layout import Layout, quantize
from vfl.crypto import _kernels
from vfl.crypto.keys import PrivateKey, PublicKey
from vfl.crypto.multiexp import choose_window
from vfl.crypto.pool import WorkerPool
from vfl.crypto.randomness import RandomnessPool, key_owner_args, key_owner_encrypt, randomizers
from vfl.errors import DataError, IntegrityError

ONE = mpz(1)
T = TypeVar("T")


def encrypt_rows(
    key: PublicKey | PrivateKey,
    plaintexts: Sequence[int],
    *,
    randomness: RandomnessPool | None = None,
    workers: WorkerPool | None = None,
) -> list[mpz]:
    """DJN-encrypt raw signed plaintexts (``P mod n``), one fresh randomizer each (on ``workers`` if large).

    With the :class:`PrivateKey` (the host owns its key) and no pool, the key owner's CRT path
    (DESIGN.md §8: ~1.8x faster, same ciphertext distribution under the public key).
    """
    if isinstance(key, PrivateKey):
        private_key, public_key = key, key.public_key
    else:
        private_key, public_key = None, key
    n = public_key.n
    plains = [mpz(p) % n for p in plaintexts]
    if private_key is not None and randomness is None:
        if workers is not None and workers.should_split(len(plains)):
            return workers.map_chunks(_kernels.crt_encrypt, plains, key_owner_args(private_key))
        return key_owner_encrypt(private_key, plains)
    if randomness is None and workers is not None and workers.should_split(len(plains)):
        args = (n, public_key.h_s, public_key.djn_exponent_bits, public_key.djn_window)
        return workers.map_chunks(_kernels.worker_encrypt, plains, args)
    rands = randomizers(public_key, len(plains)) if randomness is None else randomness.take(len(plains))
    return _kernels.djn_combine(plains, rands, n, public_key.n_square)


def encrypt_parts(
    private_key: PrivateKey, plaintexts: Sequence[int], part_size: int, workers: WorkerPool | None = None
) -> Iterator[tuple[list[mpz], float]]:
    """Key-owner encryption part by part, the next parts computing on ``workers`` while one is sent.

    Yields the ciphertexts of ``plaintexts[k * part_size : (k + 1) * part_size]`` for ``k = 0, 1, ...`` and
    the CPU seconds they took;
    with workers, up to :data:`PARTS_AHEAD` parts are in flight (each split over every worker).
    """
    n = private_key.public_key.n
    starts = range(0, len(plaintexts), part_size)
    if workers is None or workers.workers <= 1:
        for start in starts:
            chunk = [mpz(p) % n for p in plaintexts[start : start + part_size]]
            yield timed_call(key_owner_encrypt, private_key, chunk)
        return
    args = key_owner_args(private_key)

    def submit(start: int) -> list[Future]:
        chunk = [mpz(p) % n for p in plaintexts[start : start + part_size]]
        edges = [len(chunk) * i // workers.workers for i in range(workers.workers + 1)]
        return [
            workers.submit(timed_call, _kernels.crt_encrypt, chunk[lo:hi], *args)
            for lo, hi in itertools.pairwise(edges)
        ]

    pending: deque[list[Future]] = deque()
    todo = iter(starts)
    for start in itertools.islice(todo, PARTS_AHEAD):
        pending.append(submit(start))
    while pending:
        futures = pending.popleft()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(submit(nxt))
        done = [f.result() for f in futures]
        yield [c for cts, _ in done for c in cts], sum(sec for _, sec in done)


PARTS_AHEAD = 2


def timed_call(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``(fn(*args), CPU seconds it took)``: a worker task that reports its own cost."""
    start = time.process_time()
    return fn(*args), time.process_time() - start


# ---------------------------------------------------------------------------------------------
# guest: fold, noise, mask
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Accumulators:
    """Encrypted per-guest-cell sums in :meth:`Layout.accumulator_specs` order."""

    public_key: PublicKey
    layout: Layout
    ciphertexts: list[mpz] = field(repr=False)


Partial = tuple[list[mpz], list[mpz]]
"""Partial accumulators of some rows: ``(positive, negative)`` products (see :func:`fold_kernel`)."""


def guest_exponents(guest_metrics: pd.DataFrame | None, layout: Layout, n_rows: int) -> list[np.ndarray]:
    """The guest's quantized metric values (int64), one array per guest metric of the layout."""
    out = []
    for m in layout.guest_metrics:
        if guest_metrics is None or m not in guest_metrics.columns:
            raise DataError(f"guest metric column {m!r} is missing")
        if len(guest_metrics) != n_rows:
            raise DataError("guest metrics and guest cells have different row counts")
        out.append(quantize(guest_metrics[m], layout.bounds[m], layout.fraction_bits, m))
    return out


def check_cells(cells: np.ndarray, layout: Layout, *, side: str = "guest") -> None:
    """At most ``layout.rows`` rows with a cell (the slots are sized for that many), every code of the
    layout's ``side`` cells or -1 (a row left out)."""
    folded = int((cells >= 0).sum())
    if folded > layout.rows:
        raise DataError(
            f"{folded} rows to fold exceed the layout's {layout.rows} (slots are sized for that many)"
        )
    n_cells = layout.guest_cells if side == "guest" else layout.host_cells
    if len(cells) and (cells.max() >= n_cells or cells.min() < -1):
        raise DataError(f"{side} cell codes must be in [-1, {n_cells}), got {cells.min()}..{cells.max()}")


def fold_args(layout: Layout, public_key: PublicKey) -> tuple[int, int, int, mpz]:
    """The trailing arguments of :func:`fold_kernel` for a layout."""
    return (layout.guest_cells, len(layout.blocks), layout.count_blocks, public_key.n_square)


def fold(
    encrypted_rows: Sequence[mpz],
    guest_cells: Any,
    layout: Layout,
    public_key: PublicKey,
    *,
    guest_metrics: pd.DataFrame | None = None,
    workers: WorkerPool | None = None,
) -> Accumulators:
    """Fold every row into its guest cell's accumulators: one modmul per row and block.

    ``guest_cells[i]`` is row ``i``'s guest cell index (:func:`cell_codes`), ``-1`` to leave it out.
    Each guest metric adds a bucket multi-exponentiation per guest cell over the count blocks (about
    two modmuls per row). With ``workers``, contiguous row ranges are folded on the workers and their
    partial products multiplied (one more modmul per accumulator and worker).
    """
    cells = np.asarray(guest_cells, dtype=np.int64)
    n_rows, n_blocks = len(cells), len(layout.blocks)
    if len(encrypted_rows) != layout.ciphertexts(n_rows):
        raise IntegrityError(
            f"expected {layout.ciphertexts(n_rows)} row ciphertexts ({n_rows} rows x {n_blocks} blocks), got {len(encrypted_rows)}"
        )
    check_cells(cells, layout)
    gq = guest_exponents(guest_metrics, layout, n_rows)
    args = fold_args(layout, public_key)
    kernel = fold_task(layout)
    per = 2 if layout.pair_bits else 1  # rows a ciphertext
    n_cts = len(encrypted_rows) // n_blocks
    if workers is not None and workers.should_split(n_rows * n_blocks, weight=0.01 * (1 + 2 * len(gq))):
        parts = max(1, min(workers.workers, n_cts))
        edges = [n_cts * i // parts for i in range(parts + 1)]
        futures = [
            workers.submit(
                kernel, list(encrypted_rows[lo * n_blocks : hi * n_blocks]), cells[lo * per : hi * per],
                [q[lo * per : hi * per] for q in gq], *args,
            )
            for lo, hi in itertools.pairwise(edges)
        ]  # fmt: skip
        partials = [f.result() for f in futures]
    else:
        partials = [kernel(list(encrypted_rows), cells, gq, *args)]
    return combine(partials, layout, public_key)


def fold_task(layout: Layout) -> Callable[..., Partial]:
    """The worker task that folds a range of rows of this layout: :func:`fold_kernel`, or
    :func:`pair_fold_kernel` when two rows share a plaintext."""
    return pair_fold_kernel if layout.pair_bits else fold_kernel


def pair_fold_kernel(cts: list[mpz], cells: np.ndarray, qs: list[np.ndarray], *fold: Any) -> Partial:
    """Partial accumulators of a range of paired rows (rows ``2j``, ``2j + 1`` in ciphertext ``j``), in
    :meth:`Layout.sealed_specs` order: each ciphertext folded into the low-half accumulators of row ``2j``'s
    cell and the high-half accumulators of row ``2j + 1``'s (one modmul per row). ``fold``: the trailing
    arguments of :func:`fold_kernel` (:func:`fold_args`)."""
    cells = np.asarray(cells, dtype=np.int64)
    n_cts = len(cts) // fold[1]
    halves = []
    for start in (0, 1):
        half = [np.asarray(a, dtype=np.int64)[start::2] for a in (cells, *qs)]
        padded = [np.zeros(n_cts, dtype=np.int64) for _ in half]
        padded[0] -= 1  # a missing last row (odd count) is left out
        for dst, src in zip(padded, half, strict=True):
            dst[: len(src)] = src
        halves.append(fold_kernel(cts, padded[0], padded[1:], *fold))
    return halves[0][0] + halves[1][0], halves[0][1] + halves[1][1]


def combine(partials: Sequence[Partial], layout: Layout, public_key: PublicKey) -> Accumulators:
    """Multiply partial accumulators together and divide by the negative-exponent parts (one inversion each)."""
    n2 = public_key.n_square
    size = layout.accumulators
    pos = [_kernels.product([pp[0][a] for pp in partials], n2) for a in range(size)]
    neg = [_kernels.product([pp[1][a] for pp in partials], n2) for a in range(size)]
    out = [c * gmpy2.invert(d, n2) % n2 if d != 1 else c for c, d in zip(pos, neg, strict=True)]
    return Accumulators(public_key, layout, out)


def fold_kernel(
    cts: list[mpz],
    cells: np.ndarray,
    qs: list[np.ndarray],
    g_cells: int,
    n_blocks: int,
    count_blocks: int,
    n2: mpz,
) -> Partial:
    """Partial accumulators of a row range, in :meth:`Layout.accumulator_specs` order (a worker task).

    Rows are grouped by guest cell; per cell and block one product (a modmul per row), per guest
    metric one bucket multi-exponentiation ``prod_i c_i^|q_i|`` over the rows with ``q_i > 0`` and one over
    those with ``q_i < 0`` (gathered in ``negative``, so one inversion per accumulator finishes the fold).
    """
    per_g = n_blocks + len(qs) * count_blocks
    pos = [ONE] * (g_cells * per_g)
    neg = [ONE] * (g_cells * per_g)
    cells = np.asarray(cells, dtype=np.int64)
    order = np.argsort(cells, kind="stable")
    edges = np.searchsorted(cells[order], np.arange(g_cells + 1))
    for g in range(g_cells):
        rows = order[edges[g] : edges[g + 1]]
        if not len(rows):
            continue
        base = g * per_g
        for b in range(n_blocks):
            pos[base + b] = _kernels.product([cts[i * n_blocks + b] for i in rows.tolist()], n2)
        for mi, q in enumerate(qs):
            e = np.asarray(q, dtype=np.int64)[rows]
            for target, keep in ((pos, e > 0), (neg, e < 0)):
                if not keep.any():
                    continue
                sel, ex = rows[keep].tolist(), np.abs(e[keep])
                for b in range(count_blocks):
                    a = base + n_blocks + mi * count_blocks + b
                    target[a] = multiexp([cts[i * n_blocks + b] for i in sel], ex, n2)
    return pos, neg


def multiexp(bases: Sequence[mpz], exponents: np.ndarray, n2: mpz) -> mpz:
    """``prod_i bases_i^exponents_i mod n2`` for non-negative int64 exponents (bucket method)."""
    bits = max(1, int(exponents.max()).bit_length())
    window = choose_window(bits, len(bases))
    n_windows = -(-bits // window)
    shifts = (np.arange(n_windows, dtype=np.int64) * window)[:, None]
    digits = (exponents[None, :] >> shifts) & ((1 << window) - 1)
    return _kernels.bucket_multiexp(bases, digits[None, :, :], window, n2)[0]
