"""Encrypted cross-tabs: counts and sums of shared customers by (guest cell) x (host cell).

Written for the host encrypting under its own Paillier key and the guest folding; the guest may as well
encrypt and the host fold (:mod:`vfl.analytics.plan`: the layout is then written from the host's side,
"guest" meaning the folding party). All numbers travel as *signed integers in slots* of a plaintext:

* a **host cell** is one combination of the host's segment columns (mixed radix over each column's
  declared categories; no segment columns = one cell); a **guest cell** likewise for the guest's;
* a count slot holds 0 or 1 per row; a metric slot holds ``q = round(clip(x, lo, hi) * 2^f)``
  (``f = fraction_bits``), signed;
* the slots of a block sit one after the other from bit 0, each as wide as its kind needs (count
  slots ``slot_bits``, host-metric slots ``metric_bits``), in a plaintext ``P`` encrypted as ``P mod n``.

**Slot width.** With ``R`` the most rows folded (the intersection size) and ``T_m`` the noise limit of
measure ``m`` (:func:`vfl.analytics.dp.noise_limit`: one share exceeds it with probability < 2^-64), a
slot must hold ``|v| <= R * Q_m + 2 T_m`` after the fold and both noise shares, where ``Q_count = 1``
and ``Q_m = max(|lo|, |hi|) 2^f``; a width is ``bitlen(that) + 2`` (a sign bit and one bit of margin),
per kind (:func:`vfl.analytics.layout.slot_widths`: a count slot also holds the guest metrics' sums).
Every slot value stays in ``(-2^(w-1), 2^(w-1))`` and the packed total below ``2^(n_bits - 3) < n/2``:
it decrypts to a unique signed integer whose balanced digits (lowest slot first, carrying the borrow of
each negative digit) are exactly the slot values. Sums of plaintexts are sums of slot vectors, so no
slot ever overflows into a neighbour.

**Blocks.** Count slots come first. Without guest metrics, host-metric slots follow in the same block.
With guest metrics, if counts and host metrics fit one plaintext with room above for the products
``R Q_g Q_h`` that carry out of the host-metric slots (the block's extent, plus a 64-bit mask), they
share one **mixed** block (one ciphertext per row) and the guest-metric accumulators are **truncated**:
masked so that the host's decryption is uniform in their count bits and statistically hidden above
(:func:`seal`), and the host returns the count bits alone (:func:`respond`); otherwise count slots get
blocks of their own.

**Pairs.** When two rows fit (``Layout.pair_bits``), rows ``2j`` and ``2j + 1`` share plaintext ``j``
(:func:`pair_plaintexts`); the fold puts each ciphertext into the low-half accumulator of row ``2j``'s
cell and the high-half one of row ``2j + 1``'s; every accumulator is truncated to its own half, the
other half statistically masked, and the decryptor returns one value per pair of halves (their kept
bits summed), so each noise share is added once. ``seal(uniform=False)`` is for a decryptor that is the
table's recipient (the guest, when it encrypted): no mask on the kept bits, masks ``r`` and ``-r`` on a
pair's halves.

**Flow** (``[[.]]`` under the host's key; see the report/DESIGN.md for the message table)::

    host:  rows = encrypt_rows(pk, encode_rows(host_segments, host_metrics, layout))      -> guest
    guest: acc = fold(rows, guest_cells, layout, pk, guest_metrics=...)  # 1 modmul per row and block
           sealed, state = seal(acc)           # + guest noise share + uniform mask, rerandomized -> host
    host:  reply = respond(sk, sealed, layout) # decrypt (uniform), + host noise share           -> guest
    guest: table = decode(state, reply)        # - mask: value + both shares; then table.release(k)

Guest-metric sums by (guest cell, host cell) are ``prod_i [[P_i]]^(q_i)`` over the count blocks (a bucket
multi-exponentiation per guest cell, :mod:`vfl.analytics.rows`; negative ``q_i`` are gathered apart and
inverted once).
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
from vfl.analytics.layout import TRUNCATION_MASK_BITS, Accumulator, Layout, cell_codes, cell_labels, quantize
from vfl.analytics.layout import _build as _build
from vfl.analytics.layout import categories_of as categories_of
from vfl.analytics.layout import make_layout as make_layout
from vfl.analytics.layout import verify_layout as verify_layout
from vfl.analytics.rows import Accumulators as Accumulators
from vfl.analytics.rows import check_cells as check_cells
from vfl.analytics.rows import combine as combine
from vfl.analytics.rows import encrypt_parts as encrypt_parts
from vfl.analytics.rows import encrypt_rows as encrypt_rows
from vfl.analytics.rows import fold as fold
from vfl.analytics.rows import fold_args as fold_args
from vfl.analytics.rows import fold_kernel as fold_kernel
from vfl.analytics.rows import fold_task as fold_task
from vfl.analytics.rows import guest_exponents as guest_exponents
from vfl.analytics.rows import timed_call as timed_call
from vfl.crypto.keys import PrivateKey, PublicKey
from vfl.crypto.randomness import RandomnessPool, randomizers
from vfl.errors import DataError, IntegrityError

ONE = mpz(1)

# ---------------------------------------------------------------------------------------------
# host: encode and encrypt rows
# ---------------------------------------------------------------------------------------------


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
    cells = (
        cell_codes(host_segments, layout.host_categories)
        if layout.host_categories
        else np.zeros(n_rows, dtype=np.int64)
    )
    qs = {}
    for m in layout.host_metrics:
        if host_metrics is None or m not in host_metrics.columns:
            raise DataError(f"host metric column {m!r} is missing")
        qs[m] = quantize(host_metrics[m], layout.bounds[m], layout.fraction_bits, m)
    return encode_cells(cells, qs, layout)


def encode_cells(cells: np.ndarray, qs: Mapping[str, np.ndarray], layout: Layout) -> list[int]:
    """Signed plaintexts of rows given by their (encrypting side's) cell codes and quantized metrics, a
    row with cell ``-1`` all zeros (a row the encrypting party does not share, under ``guest-only``);
    two rows a plaintext when the layout pairs them (:func:`pair_plaintexts`)."""
    cells = np.asarray(cells, dtype=np.int64)
    n_rows = len(cells)
    qs = {m: np.asarray(q, dtype=np.int64).tolist() for m, q in qs.items()}
    pos = layout.positions()
    n_blocks = len(layout.blocks)
    # per host cell: where its count and metric slots are
    plan = [
        [(pos[("count", h)], None)] + [(pos[("sum", m, h)], m) for m in layout.host_metrics]
        for h in range(layout.host_cells)
    ]
    out: list[int] = [0] * (n_rows * n_blocks)
    for i, h in enumerate(cells.tolist()):
        if h < 0:
            continue
        base = i * n_blocks
        for (b, shift), m in plan[h]:
            v = 1 if m is None else qs[m][i]
            # a signed slot: Python shifts negative integers arithmetically (-v << s == -(v << s))
            out[base + b] += v << shift
    return pair_plaintexts(out, layout)


def pair_plaintexts(plains: Sequence[int], layout: Layout) -> list[int]:
    """Rows ``2j`` and ``2j + 1`` in one plaintext per block, the second from bit ``pair_bits`` (an odd
    last row alone); unchanged when the layout does not pair rows."""
    if not layout.pair_bits:
        return list(plains)
    nb, w = len(layout.blocks), layout.pair_bits
    n_rows = len(plains) // nb
    out = []
    for j in range(0, n_rows, 2):
        low = plains[j * nb : (j + 1) * nb]
        high = plains[(j + 1) * nb : (j + 2) * nb] if j + 1 < n_rows else [0] * nb
        out.extend(a + (b << w) for a, b in zip(low, high, strict=True))
    return out


def _pack(values: Sequence[int], widths: Sequence[int]) -> int:
    total, shift = 0, 0
    for v, w in zip(values, widths, strict=True):
        total += v << shift
        shift += w
    return total


def _noise_packed(layout: Layout, disable_noise_for_tests: bool) -> list[int]:
    """One party's packed noise share per accumulator (independent draws for every slot; once per pair
    of row-halves)."""
    out = []
    for spec in layout.accumulator_specs():
        draws = [
            noise_share(eps, d, disable_noise_for_tests=disable_noise_for_tests)[0]
            for eps, d in zip(
                layout.slot_epsilons(spec.slots), layout.slot_sensitivities(spec.slots), strict=True
            )
        ]
        out.append(_pack(draws, spec.widths))
    return out


@dataclass(frozen=True, eq=False)
class SealState:
    """What the folding party keeps to unmask the reply: per reply value the uniform mask of its kept bits."""

    layout: Layout
    masks: tuple[int, ...] = field(repr=False)
    n: int = field(repr=False)


def unmasked_state(layout: Layout, n: int) -> SealState:
    """The decoding state of a decryptor that is the table's recipient (:func:`seal` with ``uniform=False``)."""
    return SealState(layout, (0,) * len(layout.accumulator_specs()), n)


def _statistical(bits: int) -> int:
    """Uniform in ``[2^bits, 2^(bits + 64))``: added to a value below ``2^bits`` in magnitude it hides it
    (statistical distance 2^-63) and keeps it positive."""
    return (1 << bits) + secrets.randbelow((1 << (bits + TRUNCATION_MASK_BITS)) - (1 << bits))


def _mask(spec: Accumulator, kept: int) -> int:
    """The whole mask of a sealed value whose kept bits get ``kept``: for a truncated accumulator the
    discarded parts below (paired: the other row-half) and above are statistically masked."""
    if spec.kept_bits is None:
        return kept
    low = _statistical(spec.low_bits) if spec.shift else 0
    return low + (kept << spec.shift) + (_statistical(spec.high_bits) << (spec.shift + spec.kept_bits))


def _kept_masks(layout: Layout, n: int, uniform: bool) -> tuple[list[int], list[int]]:
    """Per sealed value the mask of its kept bits, and per reply value their sum (what decoding removes).

    ``uniform``: uniform masks (the decryptor learns nothing). Otherwise the decryptor is the table's
    recipient and learns the noised sum: no mask, and a pair's two halves get masks that cancel (``r``,
    ``-r``), so each half alone is uniform and only their sum shows.
    """
    base = layout.accumulator_specs()
    if not layout.pair_bits:
        kept = [
            secrets.randbelow(n if s.kept_bits is None else 1 << s.kept_bits) if uniform else 0 for s in base
        ]
        return kept, kept
    mods = [1 << s.kept_bits for s in base]  # every accumulator is truncated when rows are paired
    low = [secrets.randbelow(m) for m in mods]
    high = [secrets.randbelow(m) if uniform else -r % m for r, m in zip(low, mods, strict=True)]
    return low + high, [(a + b) % m for a, b, m in zip(low, high, mods, strict=True)]


def seal(
    acc: Accumulators,
    *,
    disable_noise_for_tests: bool = False,
    randomness: RandomnessPool | None = None,
    uniform: bool = True,
) -> tuple[list[mpz], SealState]:
    """Add the folding party's noise share and masks under encryption, and rerandomize.

    With ``uniform`` the decryptor sees ``v + Z_fold + R mod n`` with ``R`` uniform in ``[0, n)``: a uniform
    value, so it learns nothing (not even suppressed cells); without, the decryptor is the table's recipient
    and sees ``v + Z_fold`` (a noise share it does not know). The fresh randomizer hides which rows were folded
    where. A truncated accumulator (a guest metric over a mixed block; every one when rows are paired) is
    masked by :func:`_mask`: its discarded parts statistically, its kept bits as above; its noise share sits
    in its low half only.
    """
    pk = acc.public_key
    n, n2 = pk.n, pk.n_square
    noise = _noise_packed(acc.layout, disable_noise_for_tests)
    specs = acc.layout.sealed_specs()
    kept, state = _kept_masks(acc.layout, int(n), uniform)
    rands = few_randomizers(pk, len(specs)) if randomness is None else randomness.take(len(specs))
    out = []
    noise += [0] * (len(specs) - len(noise))  # paired: the noise share sits in the low halves (bit 0)
    for c, spec, z, r, rnd in zip(acc.ciphertexts, specs, noise, kept, rands, strict=True):
        m = mpz(z + _mask(spec, r)) % n
        c = c + n * (m * c % n)  # c (1 + m n) mod n^2
        if c >= n2:
            c -= n2
        out.append(c * rnd % n2)
    return out, SealState(acc.layout, tuple(state), int(n))


def few_randomizers(public_key: PublicKey, count: int) -> list[mpz]:
    """``count`` fresh DJN randomizers ``h_s^a`` (same distribution as :func:`randomizers`); for a few
    dozen, one exponentiation each is cheaper than building the fixed-base table (~0.7 s at 2048 bits)."""
    if count > FEW_RANDOMIZERS:
        return randomizers(public_key, count)
    bits, n2 = public_key.djn_exponent_bits, public_key.n_square
    return [gmpy2.powmod(public_key.h_s, secrets.randbits(bits), n2) for _ in range(count)]


FEW_RANDOMIZERS = 500


def respond(
    private_key: PrivateKey, sealed: Sequence[mpz], layout: Layout, *, disable_noise_for_tests: bool = False
) -> list[int]:
    """Decryptor: decrypt the (masked) accumulators and add its own noise share; reply in ``[0, n)``
    (a truncated accumulator: its kept bits only, in ``[0, 2^kept)``; paired: the sum of both halves' kept bits)."""
    if len(sealed) != layout.accumulators:
        raise IntegrityError(f"expected {layout.accumulators} accumulators, got {len(sealed)}")
    n = int(private_key.public_key.n)
    noise = _noise_packed(layout, disable_noise_for_tests)
    plain = private_key.decrypt_raw(list(sealed))
    kept = [
        int(p) if s.kept_bits is None else (int(p) >> s.shift) & ((1 << s.kept_bits) - 1)
        for s, p in zip(layout.sealed_specs(), plain, strict=True)
    ]
    base = layout.accumulator_specs()
    if layout.pair_bits:
        kept = [a + b for a, b in zip(kept[: len(base)], kept[len(base) :], strict=True)]
    out = []
    for spec, p, z in zip(base, kept, noise, strict=True):
        modulus = n if spec.kept_bits is None else 1 << spec.kept_bits
        out.append((p + z) % modulus)
    return out


# ---------------------------------------------------------------------------------------------
# guest: decode
# ---------------------------------------------------------------------------------------------


def unpack_signed(total: int, slots: int, slot_bits: int) -> list[int]:
    """Balanced base-``2^S`` digits of a signed integer, lowest slot first (inverse of packing)."""
    return unpack_widths(total, (slot_bits,) * slots)


def unpack_widths(total: int, widths: Sequence[int]) -> list[int]:
    """Balanced digits of a signed integer in slots of the given widths, lowest slot first."""
    out = []
    for w in widths:
        low = total & ((1 << w) - 1)
        digit = low - ((low >> (w - 1)) << w)  # in [-2^(w-1), 2^(w-1))
        out.append(digit)
        total = (total - digit) >> w
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
    for a, (spec, value, mask) in enumerate(zip(layout.accumulator_specs(), reply, state.masks, strict=True)):
        modulus = n if spec.kept_bits is None else 1 << spec.kept_bits
        if not 0 <= int(value) < modulus:
            raise IntegrityError(f"reply value {a} is out of range; the reply was altered")
        v = (int(value) - mask) % modulus
        if v > modulus // 2:
            v -= modulus
        g = spec.cell
        for s, d in zip(spec.slots, unpack_widths(v, spec.widths), strict=True):
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
