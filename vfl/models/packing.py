"""Multi-class gradients in one pass: K residuals per row packed into one plaintext integer.

One-vs-rest training needs ``G = X^T D`` for a ``(m, K)`` residual matrix ``D``. Instead of K
encrypted vectors and K multi-exponentiations, each row's K residuals become the slots of ONE
plaintext ``P_i``; a single ``X^T [[P]]`` (``prod_i [[P_i]]^(q_ij)``) then holds, in the slots of its
output ``j``, every class's gradient for column ``j``.

**Encoding.** Residuals are fixed point with ``f = frac_bits`` fractional bits, ``e_ik = round(D_ik 2^f)``,
``|e_ik| <= E = ceil(residual_bound 2^f)``. The *residual offset* ``E`` makes every slot non-negative:
``e'_ik = e_ik + E`` in ``[0, 2E]``. Slots are placed most significant first (the Horner order of
:mod:`vfl.crypto.packing`, so the arbiter's existing ``decrypt_packed`` reads them in class order)::

    P_i = sum_{j < c} e'_{i,k_j} 2^(S (c - 1 - j))         (c classes in this plaintext)

**Products.** With quantized columns ``|q_ij| <= x_bound`` (signed 12-20-bit ints, see
:mod:`vfl.crypto.multiexp`), output ``j`` is ``V_j = sum_i q_ij P_i = sum_slots T_jk 2^(...)`` with
``T_jk = sum_i q_ij e'_ik = G_jk + E * sum_i q_ij``. So ``|T_jk| <= B = n_rows * x_bound * 2E`` and the
party, which knows its own ``X``, recovers ``G_jk = T_jk - E * colsum_j`` exactly (integers).

**Slot width.** ``S = bitlen(2B) + mask_bits + 1`` -- :func:`vfl.crypto.packing.slot_bits_for` applied to
``B``. Two uses of the margin: (1) unmasked, every ``|T_jk| <= B < 2^(S-1)``, so the signed ``V_j`` has a
unique balanced base-``2^S`` expansion and :meth:`SlotLayout.unpack` reads it from the low slot up; (2)
masked for the arbiter, the party adds ``M_j = sum (B + r_jk) 2^(...)`` with ``r_jk`` uniform in
``[0, 2^(S-1))`` (``S - 1 >= bitlen(2B) + mask_bits``: statistical distance ``2^-mask_bits`` from
uniform per slot); every masked slot ``T + B + r`` lies in ``[0, 2^S)``, so no slot carries into its
neighbour and ``W_j = V_j + M_j`` is a non-negative integer ``< 2^(S c)``.

**Capacity.** ``t = floor((key_bits - 1) / S)`` slots per plaintext (so ``W_j < 2^(key_bits - 1) <= n``,
and unmasked ``|V_j| < 2^(S t - mask_bits) < n/3``); ``ceil(K / t)`` plaintexts per row if K slots do not
fit in one -- each is a separate encrypted vector and a separate ``rdot``.

**Scales.** :func:`packed_rdot` runs the engine's bucket multi-exponentiation *without* the alignment
squarings ``2^(4F - s_j)`` that :meth:`EncryptedVector.rdot` applies to bring columns to one exponent
(they would shift every slot); the column scales ``2^-s_j`` are applied after decoding in
:meth:`SlotLayout.gradient`. If plain ``rdot`` is used instead, divide each output by
``2^prepared.squarings[j]`` before :meth:`unpack` (``unpack(..., squarings=...)`` does it) and size the
layout with ``x_bound * 2^max(squarings)`` if the result is to be masked.

**Encrypting packed integers.** :func:`vfl.crypto.encrypt` encodes floats (an object array of big ints is
converted to float64, losing bits), so :func:`encrypt_packed` uses the engine's lowest level:
``c = (1 + P n) h_s^a mod n^2`` via ``vfl.crypto._kernels.djn_combine`` with the key's DJN randomizers,
wrapped as an ``EncryptedVector`` at exponent 0 with its bound.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfl.crypto import _kernels
from vfl.crypto.keys import PrivateKey, PublicKey
from vfl.crypto.multiexp import PreparedMatrix, rdot_ciphertexts
from vfl.crypto.packing import MIN_MASK_BITS, PackedCiphertexts, slot_bits_for
from vfl.crypto.randomness import RandomnessPool, randomizers
from vfl.crypto.vector import EncryptedVector, as_object_array, decrypt_int
from vfl.errors import CryptoError, IntegrityError

DEFAULT_FRAC_BITS = 32
"""Residual fixed point: ``2^-32`` resolution (rounding error <= ``2^-33``), like ``DEFAULT_EXPONENT``."""


@dataclass(frozen=True)
class SlotLayout:
    """How K residuals per row share plaintexts; see the module docstring for the arithmetic."""

    k_classes: int
    n_rows: int
    x_bound: int
    residual_bound: float
    key_bits: int
    mask_bits: int
    frac_bits: int
    residual_offset: int  # E
    slot_bound: int  # B
    slot_bits: int  # S
    slots_per_plaintext: int  # t

    @classmethod
    def for_problem(
        cls, k_classes: int, n_rows: int, x_bound: int, residual_bound: float, key_bits: int,
        mask_bits: int = MIN_MASK_BITS, frac_bits: int = DEFAULT_FRAC_BITS,
    ) -> SlotLayout:  # fmt: skip
        """The layout for ``k_classes`` residuals ``|D| <= residual_bound`` over at most ``n_rows`` rows
        of quantized columns ``|q| <= x_bound`` under a ``key_bits`` key and ``mask_bits`` masks."""
        if k_classes < 1 or n_rows < 1:
            raise CryptoError(
                f"a slot layout needs k_classes >= 1 and n_rows >= 1, got {k_classes}, {n_rows}"
            )
        if x_bound < 1:
            raise CryptoError(f"x_bound must be a positive integer bound on |q_ij|, got {x_bound}")
        if not (residual_bound > 0 and math.isfinite(residual_bound)):
            raise CryptoError(f"residual_bound must be positive and finite, got {residual_bound}")
        if mask_bits < MIN_MASK_BITS:
            raise CryptoError(f"mask_bits must be at least {MIN_MASK_BITS}, got {mask_bits}")
        if not 0 <= frac_bits <= 60:
            raise CryptoError(f"frac_bits must be in 0..60, got {frac_bits}")
        offset = math.ceil(Fraction(residual_bound) * (1 << frac_bits))  # exact, no float overflow
        bound = int(n_rows) * int(x_bound) * 2 * offset
        s = slot_bits_for(bound, mask_bits)
        t = (key_bits - 1) // s
        if t < 1:
            raise CryptoError(
                f"one slot needs {s} bits (rows {n_rows}, |x| <= 2^{int(x_bound).bit_length()}, residuals "
                f"<= {residual_bound} at 2^-{frac_bits}) but a {key_bits}-bit key holds {key_bits - 1}; "
                "use fewer fractional bits, smaller batches or a larger key"
            )
        return cls(
            k_classes, int(n_rows), int(x_bound), float(residual_bound), key_bits, mask_bits, frac_bits,
            offset, bound, s, min(t, k_classes),
        )  # fmt: skip

    # -- shape ------------------------------------------------------------------------------------
    @property
    def n_plaintexts(self) -> int:
        """Plaintexts (encrypted vectors, ``rdot`` calls) per row: ``ceil(K / t)``."""
        return -(-self.k_classes // self.slots_per_plaintext)

    def classes_in(self, group: int) -> range:
        """The class indices carried by plaintext ``group``, most significant slot first."""
        t = self.slots_per_plaintext
        return range(group * t, min(self.k_classes, (group + 1) * t))

    # -- packing ----------------------------------------------------------------------------------
    def encode(self, residuals: np.ndarray) -> list[list[int]]:
        """Rows of exact integers ``round(D_ik 2^f)``; CryptoError if one exceeds the residual bound."""
        d = np.asarray(residuals, dtype=np.float64)
        if d.ndim == 1 and self.k_classes == 1:
            d = d[:, None]
        if d.ndim != 2 or d.shape[1] != self.k_classes:
            raise CryptoError(f"residuals have shape {d.shape}, expected (rows, {self.k_classes})")
        if d.shape[0] > self.n_rows:
            raise CryptoError(f"{d.shape[0]} rows exceed the layout's n_rows={self.n_rows}")
        if not np.all(np.isfinite(d)):
            raise CryptoError("residuals contain NaN or infinite values")
        scaled = np.rint(np.ldexp(d, self.frac_bits))
        ints = [[int(v) for v in row] for row in scaled.tolist()]  # int(float) is exact
        peak = int(np.max(np.abs(scaled))) if scaled.size else 0
        if peak > self.residual_offset:
            raise CryptoError(
                f"a residual reaches {float(np.max(np.abs(d))):.6g}, beyond the layout's residual_bound "
                f"{self.residual_bound}; clip the residuals or build the layout with a larger bound"
            )
        return ints

    def pack_groups(self, residuals: np.ndarray) -> list[list[int]]:
        """``n_plaintexts`` lists of one non-negative packed integer per row."""
        ints = self.encode(residuals)
        s, off = self.slot_bits, self.residual_offset
        groups = []
        for g in range(self.n_plaintexts):
            cls = self.classes_in(g)
            col = []
            for row in ints:
                acc = 0
                for k in cls:  # Horner: first class ends up most significant
                    acc = (acc << s) + row[k] + off
                col.append(acc)
            groups.append(col)
        return groups

    def pack(self, residuals: np.ndarray) -> list[int]:
        """Packed integers, plaintext group by group (just one per row when ``n_plaintexts == 1``)."""
        return [v for group in self.pack_groups(residuals) for v in group]

    # -- unpacking --------------------------------------------------------------------------------
    def _groups(self, values: Sequence) -> list[list[int]]:
        if self.n_plaintexts == 1 and len(values) and not isinstance(values[0], (list, tuple, np.ndarray)):
            values = [values]
        if len(values) != self.n_plaintexts:
            raise IntegrityError(f"expected {self.n_plaintexts} plaintext groups, got {len(values)}")
        return [[int(v) for v in group] for group in values]

    def _recover(self, slots: list[list[int]], column_sums: Sequence[int]) -> np.ndarray:
        """``(cols, K)`` object array of ``G_jk = T_jk - E colsum_j`` from per-group ``T``."""
        sums = [int(c) for c in column_sums]
        out = np.empty((len(sums), self.k_classes), dtype=object)
        for g, group in enumerate(slots):
            for j, row in enumerate(group):
                for k, t_val in zip(self.classes_in(g), row, strict=True):
                    if abs(t_val) > self.slot_bound:
                        raise IntegrityError(
                            f"column {j}, class {k}: a slot exceeds the layout's bound; the residual or x "
                            "bound was too small or the value was altered"
                        )
                    out[j, k] = t_val - self.residual_offset * sums[j]
        return out

    def unpack(
        self,
        values: Sequence,
        column_sums: Sequence[int],
        squarings: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Exact integer gradients ``G = Q^T E`` as a ``(cols, K)`` object array of Python ints.

        ``values[g][j]`` is the decrypted signed ``V_j`` of plaintext group ``g`` (a flat list of the
        columns when there is one group); ``column_sums[j] = sum_i q_ij`` over the same rows. Pass
        ``squarings=prepared.squarings`` when ``V`` came from :meth:`EncryptedVector.rdot`.
        """
        groups = self._groups(values)
        s = self.slot_bits
        half, full = 1 << (s - 1), 1 << s
        slots = []
        for g, group in enumerate(groups):
            c = len(self.classes_in(g))
            if len(group) != len(column_sums):
                raise IntegrityError(
                    f"group {g} has {len(group)} columns, column_sums has {len(column_sums)}"
                )
            rows = []
            for j, v in enumerate(group):
                if squarings is not None:
                    sq = int(squarings[j])
                    if v % (1 << sq):
                        raise IntegrityError(
                            f"column {j}: value is not a multiple of 2^{sq} (wrong squarings?)"
                        )
                    v >>= sq
                digits = []
                for _ in range(c):  # balanced base-2^S digits from the least significant slot
                    d = v & (full - 1)
                    if d >= half:
                        d -= full
                    digits.append(d)
                    v = (v - d) >> s
                if v != 0:
                    raise IntegrityError(f"column {j}: value has more than {c} slots; wrong layout")
                rows.append(digits[::-1])
            slots.append(rows)
        return self._recover(slots, column_sums)

    def gradient(self, ints: np.ndarray, shifts: Sequence[int] | None = None, rows: int = 1) -> np.ndarray:
        """float64 ``(cols, K)`` gradient ``G_jk 2^-(f + s_j) / rows`` (``s_j``: the column's quantization
        shift, ``PreparedMatrix.shifts``; 0 for integer columns)."""
        cols = ints.shape[0]
        sh = np.zeros(cols, dtype=np.int64) if shifts is None else np.asarray(shifts, dtype=np.int64)
        out = np.empty(ints.shape)
        for j in range(cols):
            scale = self.frac_bits + int(sh[j])
            for k in range(ints.shape[1]):
                out[j, k] = _ldexp_int(int(ints[j, k]), -scale)
        return out / rows

    # -- masking for the arbiter ------------------------------------------------------------------
    def mask(
        self, outputs: Sequence[EncryptedVector], randomness: RandomnessPool | None = None
    ) -> tuple[list[PackedCiphertexts], PackedMask]:
        """Mask each ``[[V_j]]`` (one vector of columns per group) with ``M_j`` and re-randomize.

        Returns one :class:`~vfl.crypto.packing.PackedCiphertexts` per group (``slot_bits = S``,
        ``c`` slots per ciphertext, one ciphertext per column) for :func:`~vfl.crypto.packing.decrypt_packed`, and the
        masks the party keeps.
        """
        if len(outputs) != self.n_plaintexts:
            raise CryptoError(f"expected {self.n_plaintexts} encrypted outputs, got {len(outputs)}")
        s, b = self.slot_bits, self.slot_bound
        messages, masks = [], []
        for g, vec in enumerate(outputs):
            c = len(self.classes_in(g))
            pk = vec.public_key
            if pk.bits != self.key_bits:
                raise CryptoError(
                    f"the layout is for {self.key_bits}-bit keys, the vector is under {pk.bits} bits"
                )
            n, n2 = pk.n, pk.n_square
            group_masks = [[secrets.randbelow(1 << (s - 1)) + b for _ in range(c)] for _ in range(len(vec))]
            rands = randomizers(pk, len(vec)) if randomness is None else randomness.take(len(vec))
            cts = []
            for ct, row, r in zip(vec.ciphertexts, group_masks, rands, strict=True):
                big = 0
                for mk in row:
                    big = (big << s) + mk
                x = ct + n * (big * ct % n)  # [[V + M]]: c (1 + M n) mod n^2
                if x >= n2:
                    x -= n2
                cts.append(x * r % n2)
            messages.append(PackedCiphertexts(pk, cts, s, c * len(vec), c))
            masks.append(group_masks)
        return messages, PackedMask(self, masks)


@dataclass(frozen=True, eq=False)
class PackedMask:
    """The masks ``B + r_jk`` a party added (kept locally) and the layout, to read the arbiter's slots."""

    layout: SlotLayout
    masks: list[list[list[int]]] = dataclasses.field(repr=False)

    def unmask(self, slots: Sequence[Sequence[int]], column_sums: Sequence[int]) -> np.ndarray:
        """Exact ``(cols, K)`` integer gradients from the arbiter's decrypted slots (one list per group)."""
        lay = self.layout
        if len(slots) != lay.n_plaintexts:
            raise IntegrityError(f"expected {lay.n_plaintexts} slot lists, got {len(slots)}")
        top = 1 << lay.slot_bits
        t_vals = []
        for g, (flat, group_masks) in enumerate(zip(slots, self.masks, strict=True)):
            c = len(lay.classes_in(g))
            if len(flat) != c * len(group_masks):
                raise IntegrityError(f"group {g}: {len(flat)} slots, expected {c * len(group_masks)}")
            rows = []
            for j, row_masks in enumerate(group_masks):
                row = []
                for k, mk in enumerate(row_masks):
                    v = int(flat[j * c + k])
                    if not 0 <= v < top:
                        raise IntegrityError(f"slot {j * c + k} is outside its {lay.slot_bits}-bit range")
                    row.append(v - mk)
                rows.append(row)
            t_vals.append(rows)
        return lay._recover(t_vals, column_sums)


def _ldexp_int(value: int, exp: int) -> float:
    """``value * 2^exp`` correctly rounded for big ints."""
    if exp >= 0:
        return float(value << exp)
    return value / (1 << -exp)


def encrypt_packed(
    public_key: PublicKey, packed: Sequence[int], randomness: RandomnessPool | None = None
) -> EncryptedVector:
    """Encrypt non-negative packed integers exactly (exponent 0, bound = the largest)."""
    n = public_key.n
    plains = [mpz(int(v)) for v in packed]
    if any(p < 0 for p in plains):
        raise CryptoError("packed plaintexts must be non-negative")
    peak = int(max(plains, default=0))
    if peak > n // 3 - 1:
        raise CryptoError(
            f"a packed plaintext has {peak.bit_length()} bits, beyond a {public_key.bits}-bit key's n/3"
        )
    rands = randomizers(public_key, len(plains)) if randomness is None else randomness.take(len(plains))
    cts = _kernels.djn_combine(plains, rands, n, public_key.n_square)
    return EncryptedVector(public_key, as_object_array(cts), 0, peak)


def packed_rdot(
    vector: EncryptedVector,
    prepared: PreparedMatrix,
    rows: np.ndarray | Sequence[int] | slice | None = None,
    *,
    randomness: RandomnessPool | None = None,
    rerandomize: bool = True,
) -> EncryptedVector:
    """``[[sum_i q_ij P_i]]`` per column: the engine's ``rdot`` without the column-alignment squarings."""
    unscaled = dataclasses.replace(prepared, shifts=np.zeros_like(prepared.shifts))
    out, exponent_shift, bound = rdot_ciphertexts(
        list(vector.ciphertexts), vector.public_key, unscaled, rows, vector.bound
    )
    result = vector._like(out, vector.exponent - exponent_shift, bound)  # exponent_shift is 0 here
    return result.rerandomize(randomness=randomness) if rerandomize else result


def column_sums(
    prepared: PreparedMatrix, rows: np.ndarray | Sequence[int] | slice | None = None
) -> list[int]:
    """``sum_i q_ij`` over ``rows`` (exact Python ints), what :meth:`SlotLayout.unpack` subtracts."""
    _, q = prepared.select(rows)
    return [int(v) for v in q.astype(np.int64).sum(axis=0).tolist()]


def x_bound_of(prepared: PreparedMatrix) -> int:
    """The bound on ``|q_ij|`` of a prepared matrix: ``2^(bits-1) - 1``."""
    return (1 << (prepared.bits - 1)) - 1


def decrypt_outputs(private_key: PrivateKey, outputs: Sequence[EncryptedVector]) -> list[list[int]]:
    """Signed ``V_j`` per group (tests and single-key settings; the arbiter sees only masked values)."""
    return [decrypt_int(private_key, v) for v in outputs]


# -- the multi-class loss: every class's label term in one slot, the others masked --------------------
def add_packed(vector: EncryptedVector, values: Sequence[int]) -> EncryptedVector:
    """``[[P_i + v_i]]`` for signed integers ``v_i`` (exponent 0): ``c_i (1 + (v_i mod n) n) mod n^2``."""
    pk = vector.public_key
    n, n2 = pk.n, pk.n_square
    if len(values) != len(vector):
        raise CryptoError(f"{len(values)} packed values for {len(vector)} ciphertexts")
    out = [ct * (1 + (mpz(int(v)) % n) * n) % n2 for ct, v in zip(vector.ciphertexts, values, strict=True)]
    return vector._like(as_object_array(out), bound=None)


def offset_packed(layout: SlotLayout) -> int:
    """The packed integer with every slot equal to the residual offset ``E``."""
    acc = 0
    for _ in range(layout.k_classes):
        acc = (acc << layout.slot_bits) + layout.residual_offset
    return acc


@dataclass
class DiagonalLoss:
    """``[[sum_c (sum_i s_ic e'_ic) + plain + encrypted terms]]`` in one slot, from packed residual rows.

    With ``P_i`` holding class ``c`` in slot position ``K-1-c`` (Horner), ``sum_i s_ic [[P_i]]`` raised
    to ``2^(S c)`` moves class ``c``'s slot to position ``K-1`` for every ``c``; the product over classes
    holds ``sum_c s_c . e'_c`` there and cross-class sums in positions ``0 .. 2K-2`` around it. Terms
    added with :meth:`add_top` land in position ``K-1`` too. :meth:`seal` adds a fresh uniform mask to
    every other position (``2^(S-2) + r``, ``r < 2^(S-1)``; each of their values stays below
    ``2^(S-41)``, so 40 bits of statistical hiding) and ``2^(S-2)`` to position ``K-1``, so that the
    key holder, decrypting, reads exactly one number (:func:`read_slot`) and nothing else.
    """

    layout: SlotLayout
    public_key: PublicKey
    _ct: mpz = dataclasses.field(default_factory=lambda: mpz(1))
    _plain: int = 0
    _cross_bound: int = 0

    @property
    def positions(self) -> int:
        return 2 * self.layout.k_classes - 1

    def __post_init__(self) -> None:
        if self.layout.n_plaintexts != 1 or self.layout.slot_bits * self.positions > self.layout.key_bits - 1:
            top = (self.layout.key_bits - 1) // self.layout.slot_bits
            raise CryptoError(
                f"the multi-class loss needs {self.positions} slots of {self.layout.slot_bits} bits; a "
                f"{self.layout.key_bits}-bit key holds {top}: at most {(top + 1) // 2} classes with this key "
                "(use a larger key_bits or fewer classes)"
            )

    def add_label_terms(self, packed: EncryptedVector, signs: np.ndarray, factor: int) -> None:
        """Add ``factor * sum_c 2^(S c) sum_i s_ic P_i`` for ``signs`` (rows, K) of +-1."""
        n2 = self.public_key.n_square
        s = np.asarray(signs)
        cts = list(packed.ciphertexts)
        if s.shape != (len(cts), self.layout.k_classes) or not np.all(np.abs(s) == 1):
            raise CryptoError(f"signs must be +-1 of shape ({len(cts)}, {self.layout.k_classes})")
        total = mpz(1)
        for c in range(self.layout.k_classes):
            plus = (
                _kernels.product([cts[i] for i in np.flatnonzero(s[:, c] > 0)], n2)
                if np.any(s[:, c] > 0)
                else mpz(1)
            )
            minus = (
                _kernels.product([cts[i] for i in np.flatnonzero(s[:, c] < 0)], n2)
                if np.any(s[:, c] < 0)
                else mpz(1)
            )
            v = plus * gmpy2.invert(minus, n2) % n2
            total = total * gmpy2.powmod(v, mpz(1) << (self.layout.slot_bits * c), n2) % n2
        if factor < 0:
            total = gmpy2.invert(total, n2)
        self._ct = self._ct * gmpy2.powmod(total, abs(int(factor)), n2) % n2
        self._cross_bound += (
            abs(int(factor)) * self.layout.k_classes * len(cts) * 2 * self.layout.residual_offset
        )

    def add_top(self, value: int | EncryptedVector) -> None:
        """Add a signed integer, or a length-1 encrypted integer (exponent ``-frac_bits/4``), at position K-1."""
        shift = self.layout.slot_bits * (self.layout.k_classes - 1)
        if isinstance(value, EncryptedVector):
            if len(value) != 1 or 4 * -value.exponent != self.layout.frac_bits:
                raise CryptoError(f"a loss term must be one value at exponent {-self.layout.frac_bits // 4}")
            n2 = self.public_key.n_square
            self._ct = self._ct * gmpy2.powmod(mpz(value.ciphertexts[0]), mpz(1) << shift, n2) % n2
        else:
            self._plain += int(value) << shift

    def seal(self, randomness: RandomnessPool | None = None) -> mpz:
        """The masked ciphertext for the key holder (fresh randomness)."""
        s, pk = self.layout.slot_bits, self.public_key
        if self._cross_bound >= 1 << (s - MIN_MASK_BITS - 1):
            raise CryptoError(
                "too many batches in one epoch for the multi-class loss slots; use larger batches"
            )
        mask = 0
        for p in range(self.positions - 1, -1, -1):
            low = 1 << (s - 2)
            mask = (mask << s) + (
                low if p == self.layout.k_classes - 1 else low + secrets.randbelow(1 << (s - 1))
            )
        n, n2 = pk.n, pk.n_square
        r = (randomizers(pk, 1) if randomness is None else randomness.take(1))[0]
        plain = (mpz(self._plain) + mask) % n
        return self._ct * (1 + plain * n) % n2 * r % n2


def read_slot(private_key: PrivateKey, ciphertext: int, slot_bits: int, slot: int) -> int:
    """The key holder's side of :class:`DiagonalLoss`: the signed value in position ``slot``."""
    w = int(private_key.decrypt_raw([mpz(int(ciphertext))])[0])
    digit = (w >> (slot_bits * slot)) & ((1 << slot_bits) - 1)
    return digit - (1 << (slot_bits - 2))
