"""Masking and Horner packing: many masked fixed-point values per ciphertext, one decryption each.

The LR gradient round trip (DESIGN.md §6, steps 3-5)::

    # data party p, holding g = [[X_p[B]^T d]] (an EncryptedVector with a known bound)
    packed, state = mask_and_pack(g, randomness=pool)     # -> arbiter: packed.to_arrow()
    # arbiter
    slots = decrypt_packed(private_key, PackedCiphertexts.from_arrow(table, pk))
    reply = ints_to_arrow(slots)                           # -> back to p
    # data party p
    gradient = state.unmask(ints_from_arrow(reply))        # float64, exact up to the scales

**Masks.** With ``B`` an upper bound on every ``|g_j|`` (as integer encodings), each slot carries
``g_j + B + r_j`` where ``B`` makes it non-negative and ``r_j`` is uniform in ``[0, 2^L)`` with ``L =
bitlen(2B) + mask_bits`` (``mask_bits`` >= 40) drawn from ``secrets``: the arbiter's view of each slot is
within statistical distance ``2^-mask_bits`` of uniform, whatever ``g_j`` is. A slot has ``S = L + 1``
bits, so no slot ever carries into its neighbour.

**Packing.** ``t = floor((n_bits - 1) / S)`` values per ciphertext, Horner style: ``C = ((c_1^(2^S) c_2)^(2^S)
c_3 ...)`` encrypts ``sum_j g_j 2^(S (t-1-j)) mod n`` (``(t-1) S`` squarings and ``t-1`` modmuls). The masks
are then added to the *packed* plaintext in one step, ``C (1 + R n)`` with ``R = sum_j (r_j + B) 2^(S
(t-1-j))`` -- the signed ``g_j`` borrow from their neighbours in ``C`` but the sum ``sum_j (g_j + B + r_j)
2^(...)`` has only non-negative slots below ``2^S``, so it is exact and ``< n``. Finally one fresh
randomizer per packed ciphertext. Unpacking is shifts and masks of the decrypted integer.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from gmpy2 import mpz

from vfl.crypto import _kernels
from vfl.crypto.arrow import ciphertext_table, int_metadata, read_metadata, table_ciphertexts
from vfl.crypto.encoding import LOG2_BASE, ints_to_float
from vfl.crypto.keys import PrivateKey, PublicKey
from vfl.crypto.randomness import RandomnessPool, randomizers
from vfl.errors import CryptoError, IntegrityError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vfl.crypto.pool import WorkerPool
    from vfl.crypto.vector import EncryptedVector

PACKED_KIND = b"paillier.packed"
MIN_MASK_BITS = 40
_SLOT_BITS = b"vfl.paillier.slot_bits"
_COUNT = b"vfl.paillier.count"
_PER_CT = b"vfl.paillier.slots_per_ciphertext"


def slots_per_ciphertext(public_key: PublicKey, slot_bits: int) -> int:
    """How many ``slot_bits``-bit slots fit below ``n`` (``floor((n_bits - 1) / slot_bits)``)."""
    return (public_key.bits - 1) // slot_bits


def slot_bits_for(bound: int, mask_bits: int = MIN_MASK_BITS) -> int:
    """Slot width for values with ``|g| <= bound`` under ``mask_bits``-bit statistical masks."""
    return (2 * int(bound)).bit_length() + mask_bits + 1


@dataclass(frozen=True, eq=False)
class PackedCiphertexts:
    """Ciphertexts each holding up to ``slots_per_ciphertext`` slots of ``slot_bits`` bits (``count`` in all)."""

    public_key: PublicKey
    ciphertexts: list[mpz] = field(repr=False)
    slot_bits: int
    count: int
    slots_per_ciphertext: int

    @property
    def key_fingerprint(self) -> str:
        return self.public_key.fingerprint

    def group_sizes(self) -> list[int]:
        """Number of slots in each ciphertext (all full except possibly the last)."""
        t = self.slots_per_ciphertext
        return [min(t, self.count - start) for start in range(0, self.count, t)]

    def to_arrow(self) -> pa.Table:
        """Ciphertext column plus slot layout and key fingerprint in the schema metadata."""
        return ciphertext_table(
            self.ciphertexts,
            self.public_key,
            {
                b"vfl.kind": PACKED_KIND,
                _SLOT_BITS: str(self.slot_bits).encode(),
                _COUNT: str(self.count).encode(),
                _PER_CT: str(self.slots_per_ciphertext).encode(),
            },
        )

    @classmethod
    def from_arrow(cls, table: pa.Table, public_key: PublicKey) -> PackedCiphertexts:
        """Parse and validate :meth:`to_arrow` output (key, layout consistency, each ciphertext)."""
        what = "the packed message"
        meta = read_metadata(table, PACKED_KIND, public_key, what)
        slot_bits = int_metadata(meta, _SLOT_BITS, what)
        count = int_metadata(meta, _COUNT, what)
        per = int_metadata(meta, _PER_CT, what)
        if slot_bits < 1 or count < 0 or per < 1 or per * slot_bits > public_key.bits - 1:
            raise IntegrityError(f"{what}: impossible slot layout ({per} slots of {slot_bits} bits)")
        cts = table_ciphertexts(table, public_key, what)
        if len(cts) != -(-count // per):
            raise IntegrityError(
                f"{what}: {len(cts)} ciphertexts cannot hold {count} values at {per} per ciphertext"
            )
        return cls(public_key, cts, slot_bits, count, per)


@dataclass(frozen=True, eq=False)
class MaskState:
    """What the data party keeps to unmask: per-slot ``r_j + B``, the bound ``B`` and the exponent."""

    masks: tuple[int, ...] = field(repr=False)
    bound: int
    exponent: int
    slot_bits: int

    def unmask_int(self, slots: Sequence[int]) -> list[int]:
        """Exact signed encodings ``g_j = slot_j - r_j - B``; IntegrityError if a slot is implausible."""
        if len(slots) != len(self.masks):
            raise IntegrityError(f"expected {len(self.masks)} unmasked slots, received {len(slots)}")
        top = 1 << self.slot_bits
        out = []
        for i, (s, mk) in enumerate(zip(slots, self.masks, strict=True)):
            s = int(s)
            if not 0 <= s < top:
                raise IntegrityError(
                    f"slot {i} is outside its {self.slot_bits}-bit range; the reply was altered"
                )
            g = s - mk
            if abs(g) > self.bound:
                raise IntegrityError(
                    f"slot {i} unmasks to a value beyond the declared bound (2^{self.bound.bit_length()}); "
                    "the bound was too small or the reply was altered"
                )
            out.append(g)
        return out

    def unmask(self, slots: Sequence[int]) -> np.ndarray:
        """float64 values ``g_j * 16**exponent``."""
        return ints_to_float(self.unmask_int(slots), self.exponent)


def mask_and_pack(
    vector: EncryptedVector,
    *,
    bound: float | None = None,
    encoded_bound: int | None = None,
    mask_bits: int = MIN_MASK_BITS,
    randomness: RandomnessPool | None = None,
    workers: WorkerPool | None = None,
) -> tuple[PackedCiphertexts, MaskState]:
    """Mask every element with fresh ``secrets`` randomness and pack as few ciphertexts as fit below ``n``.

    The bound ``B`` on every ``|encoding|`` comes from ``encoded_bound`` (integer encodings), else
    ``bound`` (in value units: every ``|value| <= bound``; converted with a 2^-20 relative slack for
    the rounding of the inputs), else the vector's tracked ``bound`` (``encrypt`` and ``rdot``
    propagate one); a vector with no known bound is refused. Each packed ciphertext gets one fresh
    randomizer. An element that exceeds the bound is caught by :meth:`MaskState.unmask`.
    """
    if mask_bits < MIN_MASK_BITS:
        raise CryptoError(f"mask_bits must be at least {MIN_MASK_BITS}, got {mask_bits}")
    if encoded_bound is None and bound is not None:
        if not (bound >= 0 and math.isfinite(bound)):
            raise CryptoError(f"bound must be a finite non-negative number, got {bound}")
        encoded_bound = math.ceil(math.ldexp(bound * (1 + 2.0**-20), LOG2_BASE * -vector.exponent)) + 1
    if encoded_bound is None:
        encoded_bound = vector.bound
    if encoded_bound is None:
        raise CryptoError(
            "cannot size the masks: the vector's value bound is unknown; pass bound= (values) or "
            "encoded_bound=, or declare it with EncryptedVector.with_value_bound()"
        )
    bound = max(int(encoded_bound), 1)
    pk = vector.public_key
    slot_bits = slot_bits_for(bound, mask_bits)
    per = slots_per_ciphertext(pk, slot_bits)
    if per < 1:
        raise CryptoError(
            f"values bounded by 2^{bound.bit_length()} need {slot_bits}-bit slots, more than a {pk.bits}-bit key "
            "holds; use a coarser exponent or fewer quantization bits"
        )
    count = len(vector)
    mask_range = 1 << (slot_bits - 1)  # L = slot_bits - 1
    masks = tuple(secrets.randbelow(mask_range) + bound for _ in range(count))
    cts = list(vector.ciphertexts)
    groups = [cts[s : s + per] for s in range(0, count, per)]
    if workers is not None and len(groups) >= 2 * workers.workers and workers.workers > 1:
        chunks = [groups[i :: workers.workers] for i in range(workers.workers)]
        futures = [workers.submit(_kernels.horner_pack_many, ch, slot_bits, pk.n_square) for ch in chunks]
        results = [fut.result() for fut in futures]
        packed = [results[i % workers.workers][i // workers.workers] for i in range(len(groups))]
    else:
        packed = _kernels.horner_pack_many(groups, slot_bits, pk.n_square)
    n, n2 = pk.n, pk.n_square
    rands = randomizers(pk, len(packed)) if randomness is None else randomness.take(len(packed))
    out = []
    for gi, (c, r) in enumerate(zip(packed, rands, strict=True)):
        start = gi * per
        chunk = masks[start : start + per]
        big_r = 0
        for mk in chunk:  # R = sum_j (r_j + B) 2^(S (t-1-j)), Horner order
            big_r = (big_r << slot_bits) + mk
        c = c + n * (big_r * c % n)  # C (1 + R n) mod n^2: masks added to the packed plaintext
        if c >= n2:
            c -= n2
        out.append(c * r % n2)  # one fresh randomizer per outgoing ciphertext
    packed_ct = PackedCiphertexts(pk, out, slot_bits, count, per)
    return packed_ct, MaskState(masks, bound, vector.exponent, slot_bits)


def unpack_plaintexts(packed: PackedCiphertexts, plaintexts: Sequence[mpz]) -> list[int]:
    """Split decrypted packed plaintexts into their slots (non-negative ints, in order)."""
    sizes = packed.group_sizes()
    if len(plaintexts) != len(sizes):
        raise IntegrityError(f"expected {len(sizes)} packed plaintexts, got {len(plaintexts)}")
    s = packed.slot_bits
    mask = (1 << s) - 1
    out: list[int] = []
    for m, t in zip(plaintexts, sizes, strict=True):
        m = int(m)
        if m >> (s * t):
            raise IntegrityError(
                "a packed plaintext exceeds its slots: the sender's masks overflowed or the layout metadata is wrong"
            )
        out.extend((m >> (s * (t - 1 - j))) & mask for j in range(t))
    return out


def decrypt_packed(
    private_key: PrivateKey, packed: PackedCiphertexts, workers: WorkerPool | None = None
) -> list[int]:
    """Decrypt packed ciphertexts (one CRT decryption each) and return every slot as a non-negative int."""
    private_key.public_key.check_same_key(packed.key_fingerprint, "the packed message")
    return unpack_plaintexts(packed, private_key.decrypt_raw(list(packed.ciphertexts), workers))
