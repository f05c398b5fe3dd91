"""Encrypted cross-tabs: counts and sums of shared customers by (guest cell) x (host cell).

The host owns the Paillier key. All numbers travel as *signed integers in slots* of a plaintext:

* a **host cell** is one combination of the host's segment columns (mixed radix over each column's
  declared categories; no segment columns = one cell); a **guest cell** likewise for the guest's;
* a count slot holds 0 or 1 per row; a metric slot holds ``q = round(clip(x, lo, hi) * 2^f)``
  (``f = fraction_bits``), signed;
* slot ``j`` of a block sits at bit ``S * j`` of the plaintext ``P = sum_j v_j 2^(S j)`` (encrypted as
  ``P mod n``), ``t = floor((n_bits - 2) / S)`` slots per block.

**Slot width.** With ``R`` the most rows the layout admits and ``T_m`` the noise limit of measure ``m``
(:func:`vfl.analytics.dp.noise_limit`: one share exceeds it with probability < 2^-64), a slot must hold
``|v| <= R * Q_m + 2 T_m`` after the fold and both noise shares, where ``Q_count = 1`` and ``Q_m =
max(|lo|, |hi|) 2^f``. ``S = bitlen(max_m (R Q_m + 2 T_m)) + 2`` (a sign bit and one bit of margin), so
every slot value stays in ``(-2^(S-1), 2^(S-1))`` and the packed total ``|P| < 2^(S t - 1) <= 2^(n_bits -
3) < n/2``: it decrypts to a unique signed integer, and the balanced digits of ``P`` in base ``2^S``
(taken from the lowest slot up, carrying the borrow of each negative digit) are exactly the slot values.
Sums of plaintexts are sums of slot vectors, so no slot ever overflows into a neighbour.

**Blocks.** Count slots come first; if the guest has metrics of its own, count slots get blocks of their
own (the guest raises them to its metric values), otherwise host-metric slots follow in the same
block. Most layouts are one block, i.e. one ciphertext per row.

**Flow** (``[[.]]`` under the host's key; see the report/DESIGN.md for the message table)::

    host:  rows = encrypt_rows(pk, encode_rows(host_segments, host_metrics, layout))      -> guest
    guest: acc = fold(rows, guest_cells, layout, pk, guest_metrics=...)  # 1 modmul per row and block
           sealed, state = seal(acc)           # + guest noise share + uniform mask, rerandomized -> host
    host:  reply = respond(sk, sealed, layout) # decrypt (uniform), + host noise share           -> guest
    guest: table = decode(state, reply)        # - mask: value + both shares; then table.release(k)

Guest-metric sums by (guest cell, host cell) are ``prod_i [[P_i]]^(q_i)`` over the count blocks (one
short exponentiation per row and metric; negative ``q_i`` are gathered apart and inverted once).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
import pandas as pd
from gmpy2 import mpz

from vfl.analytics.dp import Released, noise_share, suppress
from vfl.analytics.layout import Layout, Slot, cell_codes, cell_labels, quantize
from vfl.analytics.layout import _build as _build
from vfl.analytics.layout import categories_of as categories_of
from vfl.analytics.layout import make_layout as make_layout
from vfl.analytics.layout import verify_layout as verify_layout
from vfl.crypto import _kernels
from vfl.crypto.keys import PrivateKey, PublicKey
from vfl.crypto.pool import WorkerPool
from vfl.crypto.randomness import RandomnessPool, key_owner_args, key_owner_encrypt, randomizers
from vfl.errors import DataError, IntegrityError

# ---------------------------------------------------------------------------------------------
# host: encode and encrypt rows
# ---------------------------------------------------------------------------------------------


def _positions(layout: Layout) -> dict[Slot, tuple[int, int]]:
    return {
        s: (b, j * layout.slot_bits) for b, block in enumerate(layout.blocks) for j, s in enumerate(block)
    }


def encode_rows(
    host_segments: pd.DataFrame | None, host_metrics: pd.DataFrame | None, layout: Layout
) -> list[int]:
    """Signed plaintexts of every row (row-major, ``len(layout.blocks)`` per row; usually one).

    Row ``i`` in host cell ``h`` gets a 1 in slot ``("count", h)`` and ``q_im`` in each
    ``("sum", m, h)``: a one-hot cell indicator and the clipped fixed-point metrics (module docstring).
    """
    n_rows = None
    for frame in (host_segments, host_metrics):
        if frame is not None:
            n_rows = len(frame) if n_rows is None else n_rows
            if len(frame) != n_rows:
                raise DataError("host segments and metrics have different row counts")
    if n_rows is None:
        raise DataError("encode_rows needs the host's segment or metric columns (at least the row count)")
    if n_rows > layout.rows:
        raise DataError(f"{n_rows} rows exceed the layout's {layout.rows} (slots are sized for that many)")
    cells = (
        cell_codes(host_segments, layout.host_categories)
        if layout.host_categories
        else np.zeros(n_rows, dtype=np.int64)
    )
    qs = {}
    for m in layout.host_metrics:
        if host_metrics is None or m not in host_metrics.columns:
            raise DataError(f"host metric column {m!r} is missing")
        qs[m] = quantize(host_metrics[m], layout.bounds[m], layout.fraction_bits, m).tolist()
    pos = _positions(layout)
    n_blocks = len(layout.blocks)
    # per host cell: where its count and metric slots are
    plan = []
    for h in range(layout.host_cells):
        entries = [(pos[("count", h)], None)] + [(pos[("sum", m, h)], m) for m in layout.host_metrics]
        plan.append(entries)
    out: list[int] = [0] * (n_rows * n_blocks)
    for i, h in enumerate(cells.tolist()):
        base = i * n_blocks
        for (b, shift), m in plan[h]:
            v = 1 if m is None else qs[m][i]
            out[base + b] += v << shift if v >= 0 else -((-v) << shift)
    return out


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


# ---------------------------------------------------------------------------------------------
# guest: fold, noise, mask
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Accumulators:
    """Encrypted per-guest-cell sums in :meth:`Layout.accumulator_slots` order."""

    public_key: PublicKey
    layout: Layout
    ciphertexts: list[mpz] = field(repr=False)


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
    Each guest metric adds one short exponentiation per row (``[[P_i]]^(q_i)`` on the count blocks).
    With ``workers``, contiguous row ranges are folded on the workers and their partial products
    multiplied (one more modmul per accumulator and worker).
    """
    cells = np.asarray(guest_cells, dtype=np.int64)
    n_rows = len(cells)
    n_blocks = len(layout.blocks)
    if len(encrypted_rows) != n_rows * n_blocks:
        raise IntegrityError(
            f"expected {n_rows * n_blocks} row ciphertexts ({n_rows} rows x {n_blocks} blocks), got {len(encrypted_rows)}"
        )
    if n_rows > layout.rows:
        raise DataError(f"{n_rows} rows exceed the layout's {layout.rows}")
    g_cells = layout.guest_cells
    if n_rows and (cells.max() >= g_cells or cells.min() < -1):
        raise DataError(f"guest cell codes must be in [-1, {g_cells}), got {cells.min()}..{cells.max()}")
    n2 = public_key.n_square
    qs = {}
    for m in layout.guest_metrics:
        if guest_metrics is None or m not in guest_metrics.columns:
            raise DataError(f"guest metric column {m!r} is missing")
        if len(guest_metrics) != n_rows:
            raise DataError("guest metrics and guest cells have different row counts")
        qs[m] = quantize(guest_metrics[m], layout.bounds[m], layout.fraction_bits, m).tolist()
    gq = [qs[m] for m in layout.guest_metrics]
    args = (g_cells, n_blocks, layout.count_blocks, n2)
    if workers is not None and workers.should_split(n_rows * n_blocks, weight=0.01 * (1 + 20 * len(gq))):
        parts = max(1, min(workers.workers, n_rows))
        edges = [n_rows * i // parts for i in range(parts + 1)]
        futures = [
            workers.submit(
                _fold_kernel,
                list(encrypted_rows[edges[i] * n_blocks : edges[i + 1] * n_blocks]),
                cells[edges[i] : edges[i + 1]].tolist(),
                [q[edges[i] : edges[i + 1]] for q in gq],
                *args,
            )
            for i in range(parts)
        ]
        partials = [f.result() for f in futures]
    else:
        partials = [_fold_kernel(list(encrypted_rows), cells.tolist(), gq, *args)]
    pos = [_kernels.product([pp[0][a] for pp in partials], n2) for a in range(len(partials[0][0]))]
    neg = [_kernels.product([pp[1][a] for pp in partials], n2) for a in range(len(partials[0][1]))]
    out = [c * gmpy2.invert(d, n2) % n2 if d != 1 else c for c, d in zip(pos, neg, strict=True)]
    return Accumulators(public_key, layout, out)


def _fold_kernel(
    cts: list[mpz],
    cells: list[int],
    qs: list[list[int]],
    g_cells: int,
    n_blocks: int,
    count_blocks: int,
    n2: mpz,
) -> tuple[list[mpz], list[mpz]]:
    """Partial accumulators of a row range, in :meth:`Layout.accumulator_slots` order.

    Returns ``(positive, negative)`` products: the guest-metric terms with ``q < 0`` are gathered in
    ``negative`` (raised to ``|q|``) so one inversion per accumulator finishes the fold.
    """
    per_g = n_blocks + len(qs) * count_blocks
    pos = [mpz(1)] * (g_cells * per_g)
    neg = [mpz(1)] * (g_cells * per_g)
    for i, g in enumerate(cells):
        if g < 0:
            continue
        base, row = g * per_g, i * n_blocks
        for b in range(n_blocks):
            pos[base + b] = pos[base + b] * cts[row + b] % n2
        for mi, q in enumerate(qs):
            e = q[i]
            if e == 0:
                continue
            target = pos if e > 0 else neg
            for b in range(count_blocks):
                a = base + n_blocks + mi * count_blocks + b
                target[a] = target[a] * gmpy2.powmod(cts[row + b], abs(e), n2) % n2
    return pos, neg


def _pack(values: Sequence[int], slot_bits: int) -> int:
    total = 0
    for j, v in enumerate(values):
        total += v << (slot_bits * j) if v >= 0 else -((-v) << (slot_bits * j))
    return total


def _noise_packed(layout: Layout, disable_noise_for_tests: bool) -> list[int]:
    """One party's packed noise share per accumulator (independent draws for every slot)."""
    out = []
    for slots in layout.accumulator_slots():
        draws = [
            noise_share(eps, d, disable_noise_for_tests=disable_noise_for_tests)[0]
            for eps, d in zip(layout.slot_epsilons(slots), layout.slot_sensitivities(slots), strict=True)
        ]
        out.append(_pack(draws, layout.slot_bits))
    return out


@dataclass(frozen=True, eq=False)
class SealState:
    """What the guest keeps to unmask the host's reply (the uniform masks)."""

    layout: Layout
    masks: tuple[int, ...] = field(repr=False)
    n: int = field(repr=False)


def seal(
    acc: Accumulators, *, disable_noise_for_tests: bool = False, randomness: RandomnessPool | None = None
) -> tuple[list[mpz], SealState]:
    """Add the guest's noise share and a uniform mask under encryption, and rerandomize.

    The host decrypts ``v + Z_guest + R mod n`` with ``R`` uniform in ``[0, n)``: a uniform value, so it
    learns nothing (not even suppressed cells); the fresh randomizer hides which rows were folded where.
    """
    pk = acc.public_key
    n, n2 = pk.n, pk.n_square
    noise = _noise_packed(acc.layout, disable_noise_for_tests)
    masks = tuple(secrets.randbelow(int(n)) for _ in acc.ciphertexts)
    rands = randomizers(pk, len(masks)) if randomness is None else randomness.take(len(masks))
    out = []
    for c, z, r, rnd in zip(acc.ciphertexts, noise, masks, rands, strict=True):
        m = mpz(z + r) % n
        c = c + n * (m * c % n)  # c (1 + m n) mod n^2
        if c >= n2:
            c -= n2
        out.append(c * rnd % n2)
    return out, SealState(acc.layout, masks, int(n))


def respond(
    private_key: PrivateKey, sealed: Sequence[mpz], layout: Layout, *, disable_noise_for_tests: bool = False
) -> list[int]:
    """Host: decrypt the (uniformly masked) accumulators and add its own noise share; reply in ``[0, n)``."""
    if len(sealed) != layout.accumulators:
        raise IntegrityError(f"expected {layout.accumulators} accumulators, got {len(sealed)}")
    n = int(private_key.public_key.n)
    noise = _noise_packed(layout, disable_noise_for_tests)
    plain = private_key.decrypt_raw(list(sealed))
    return [(int(p) + z) % n for p, z in zip(plain, noise, strict=True)]


# ---------------------------------------------------------------------------------------------
# guest: decode
# ---------------------------------------------------------------------------------------------


def unpack_signed(total: int, slots: int, slot_bits: int) -> list[int]:
    """Balanced base-``2^S`` digits of a signed integer, lowest slot first (inverse of packing)."""
    half, full, mask = 1 << (slot_bits - 1), 1 << slot_bits, (1 << slot_bits) - 1
    out = []
    for _ in range(slots):
        d = total & mask
        if d >= half:
            d -= full
        out.append(d)
        total = (total - d) >> slot_bits
    if total != 0:
        raise IntegrityError("a decoded accumulator has bits beyond its slots; the reply was altered")
    return out


@dataclass(frozen=True)
class CrossTab:
    """Noised (or, in tests, exact) integer table: ``counts[g, h]`` and ``sums[m][g, h]`` in slot units."""

    layout: Layout
    counts: np.ndarray
    sums: dict[str, np.ndarray]

    @property
    def guest_labels(self) -> list[tuple]:
        return cell_labels(self.layout.guest_categories)

    @property
    def host_labels(self) -> list[tuple]:
        return cell_labels(self.layout.host_categories)

    def values(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Counts and sums as float (sums divided by ``2^fraction_bits``)."""
        scale = 2.0**-self.layout.fraction_bits
        return self.counts.astype(float), {m: s.astype(float) * scale for m, s in self.sums.items()}

    def release(self, k: int) -> Released:
        """Suppress cells whose noised count is below ``k`` (counts, sums and means alike)."""
        counts, sums = self.values()
        return suppress(counts, sums, k)

    def to_frame(self, k: int | None = None) -> pd.DataFrame:
        """Long form: one row per (guest cell, host cell) with the segment columns, count, sums, means."""
        g_cols, h_cols = list(self.layout.guest_categories), list(self.layout.host_categories)
        counts, sums = self.values()
        rel = suppress(counts, sums, k) if k is not None else None
        recs = []
        for gi, gl in enumerate(self.guest_labels):
            for hi, hl in enumerate(self.host_labels):
                rec = dict(zip(g_cols + h_cols, (*gl, *hl), strict=True))
                if rel is None:
                    rec["count"] = counts[gi, hi]
                    rec.update({f"sum_{m}": s[gi, hi] for m, s in sums.items()})
                else:
                    rec["count"] = rel.counts[gi, hi]
                    rec.update({f"sum_{m}": s[gi, hi] for m, s in rel.sums.items()})
                    rec.update({f"mean_{m}": s[gi, hi] for m, s in rel.means.items()})
                    rec["suppressed"] = not rel.released[gi, hi]
                recs.append(rec)
        return pd.DataFrame.from_records(recs)


def decode(state: SealState, reply: Sequence[int]) -> CrossTab:
    """Remove the masks and unpack: a (guest cell x host cell) table of counts and sums."""
    layout = state.layout
    if len(reply) != len(state.masks):
        raise IntegrityError(f"expected {len(state.masks)} reply values, got {len(reply)}")
    n = state.n
    g_cells, h_cells = layout.guest_cells, layout.host_cells
    counts = np.zeros((g_cells, h_cells), dtype=np.int64)
    sums = {
        m: np.zeros((g_cells, h_cells), dtype=object) for m in (*layout.host_metrics, *layout.guest_metrics)
    }
    per_g = len(layout.blocks) + len(layout.guest_metrics) * layout.count_blocks
    for a, (slots, value, mask) in enumerate(
        zip(layout.accumulator_slots(), reply, state.masks, strict=True)
    ):
        v = (int(value) - mask) % n
        if v > n // 2:
            v -= n
        g = a // per_g
        for s, d in zip(slots, unpack_signed(v, len(slots), layout.slot_bits), strict=True):
            if s[0] == "count":
                counts[g, s[1]] = d
            else:
                sums[s[1]][g, s[2]] = d
    return CrossTab(layout, counts, {m: _int_array(s) for m, s in sums.items()})


def _int_array(values: np.ndarray) -> np.ndarray:
    try:
        return values.astype(np.int64)
    except OverflowError:  # pragma: no cover - sums beyond 2^63 slot units stay exact Python ints
        return values


# ---------------------------------------------------------------------------------------------
# plaintext helpers
# ---------------------------------------------------------------------------------------------


def plain_sums(
    guest_cells: Any,
    metrics: pd.DataFrame,
    bounds: Mapping[str, tuple[float, float]],
    n_cells: int,
    fraction_bits: int,
) -> dict[str, np.ndarray]:
    """The guest's own clipped metric sums per guest cell, in plaintext (float, same quantization).

    For metrics that need no host data (by guest cell only): no encryption, and the guest adds one
    noise share (:func:`~vfl.analytics.dp.noise_share`) before releasing them.
    """
    cells = np.asarray(guest_cells, dtype=np.int64)
    keep = cells >= 0
    out = {}
    for m, b in bounds.items():
        q = quantize(metrics[m], b, fraction_bits, m)
        out[m] = np.bincount(cells[keep], weights=q[keep], minlength=n_cells)[:n_cells] * 2.0**-fraction_bits
    return out


def crosstab_local(
    guest_cells: Any,
    host_cells: Any,
    layout: Layout,
    *,
    host_metrics: pd.DataFrame | None = None,
    guest_metrics: pd.DataFrame | None = None,
) -> CrossTab:
    """The same table computed in the clear from joined data (reference for tests and simulations)."""
    g, h = np.asarray(guest_cells, dtype=np.int64), np.asarray(host_cells, dtype=np.int64)
    keep = g >= 0
    shape = (layout.guest_cells, layout.host_cells)
    flat = g[keep] * layout.host_cells + h[keep]
    counts = np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape).astype(np.int64)
    sums = {}
    for m, frame in [(m, host_metrics) for m in layout.host_metrics] + [
        (m, guest_metrics) for m in layout.guest_metrics
    ]:
        assert frame is not None
        q = quantize(frame[m], layout.bounds[m], layout.fraction_bits, m)[keep]
        acc = np.zeros(shape[0] * shape[1], dtype=np.int64)
        np.add.at(acc, flat, q)
        sums[m] = acc.reshape(shape)
    return CrossTab(layout, counts, sums)
