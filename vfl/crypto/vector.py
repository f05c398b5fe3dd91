"""``EncryptedVector``: a vector of Paillier ciphertexts with ONE fixed-point exponent.

Ciphertexts are ``gmpy2.mpz`` in a 1-D numpy object array (cheap fancy indexing for mini-batches,
Python-speed loops over raw GMP integers for the arithmetic). Every operation is vectorized over the
whole vector; phe objects appear only at the edges (:meth:`EncryptedVector.to_phe` / ``from_phe``).

Operation costs (modmul = one multiplication mod ``n^2``):

=============================  =====================================================================
``a + b`` (encrypted)          1 modmul per element (+ ``4 * dexp`` squarings if exponents differ)
``a + x`` / ``a - x`` (plain)  ~1 modmul per element (``c + n (m c mod n)``)
``-a``                         3 modmuls per element + one inversion (Montgomery batch inversion)
``a * k`` (plain scalar)       one ``|k|``-bit powmod per element (+ batch inversion if ``k < 0``)
``a.sum()``                    ``len - 1`` modmuls
``a.rdot(X)``                  ~``2 * m`` modmuls per column (bucket multi-exponentiation, see multiexp)
``a.rerandomize()``            1 modmul per element with a full randomness pool, else ~n_bits/16
=============================  =====================================================================

**Bounds.** ``bound`` is an optional, purely local upper bound on ``|encoding|`` of every element
(never sent on the wire). ``encrypt`` sets it from the data, operations propagate it, and a vector
received from a peer has none until the caller states one (``from_arrow(..., value_bound=...)`` or
:meth:`EncryptedVector.with_value_bound`). Known bounds let operations refuse an overflow before it
happens (``EncodingOverflowError``) and let :func:`vfl.crypto.packing.mask_and_pack` size its masks.

**Freshness.** Arithmetic with plaintexts keeps the operand's randomness; a party that knows an input
ciphertext could test guesses about the plaintext operand. Call :meth:`rerandomize` (cheap with a
:class:`~vfl.crypto.randomness.RandomnessPool`) on every vector derived by arithmetic before it leaves
the party. ``rdot`` and ``mask_and_pack`` do this themselves by default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gmpy2
import numpy as np
import phe
import pyarrow as pa
from gmpy2 import mpz

from vfl.crypto import _kernels
from vfl.crypto.arrow import ciphertext_table, int_metadata, read_metadata, table_ciphertexts
from vfl.crypto.encoding import (
    DEFAULT_EXPONENT,
    DEFAULT_SCALAR_EXPONENT,
    LOG2_BASE,
    decode_signed,
    encode_array,
    encode_scalar,
    ints_to_float,
)
from vfl.crypto.keys import PrivateKey, PublicKey, fingerprint_of, short_fingerprint
from vfl.crypto.multiexp import PreparedMatrix, rdot_ciphertexts
from vfl.crypto.randomness import (
    RandomnessPool,
    key_owner_args,
    key_owner_encrypt,
    public_key_of,
    randomizers,
)
from vfl.errors import CryptoError, EncodingOverflowError, IntegrityError

if TYPE_CHECKING:
    from vfl.crypto.pool import WorkerPool

VECTOR_KIND = b"paillier.encrypted_vector"
_EXPONENT = b"vfl.paillier.exponent"


def as_object_array(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object array holding ``values`` (never lets numpy look inside mpz)."""
    items = list(values)
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def _randomizers(
    public_key: PublicKey, count: int, randomness: RandomnessPool | None, workers: WorkerPool | None
) -> list[mpz]:
    if randomness is not None:
        if randomness.public_key.fingerprint != public_key.fingerprint:
            raise CryptoError(
                f"the randomness pool belongs to key {short_fingerprint(randomness.public_key.fingerprint)}, "
                f"not {short_fingerprint(public_key.fingerprint)}"
            )
        return randomness.take(count)
    return randomizers(public_key, count, workers)


def encrypt(
    key: PublicKey | PrivateKey,
    values: np.ndarray | Sequence[float],
    exponent: int = DEFAULT_EXPONENT,
    *,
    randomness: RandomnessPool | None = None,
    workers: WorkerPool | None = None,
) -> EncryptedVector:
    """Encrypt a 1-D vector at fixed-point scale ``16**exponent`` (default -8: error <= 2**-33).

    Randomizers come from ``randomness`` (a precomputed pool; online cost ~1 modmul per value) or
    are computed with the fixed-base table (~``n_bits/16`` modmuls per value), on ``workers``
    when the vector is large. With the :class:`PrivateKey` (the key owner) and no pool, the whole
    encryption runs mod ``p^2`` and ``q^2`` (~1.8x faster, same randomizer distribution, same kind of
    ciphertext under ``key.public_key``). Raises ``EncodingOverflowError`` before encrypting anything
    if a value's encoding reaches ``n/3``.
    """
    public_key = public_key_of(key)
    n = public_key.n
    ints, peak = encode_array(np.asarray(values), exponent, int(n))  # raises before any encryption
    plains = [mpz(v) % n for v in ints]
    split = randomness is None and workers is not None and workers.should_split(len(plains))
    if randomness is None and isinstance(key, PrivateKey):
        if split:
            cts = workers.map_chunks(_kernels.crt_encrypt, plains, key_owner_args(key))
        else:
            cts = key_owner_encrypt(key, plains)
    elif split:
        args = (n, public_key.h_s, public_key.djn_exponent_bits, public_key.djn_window)
        cts = workers.map_chunks(_kernels.worker_encrypt, plains, args)
    else:
        rands = _randomizers(public_key, len(plains), randomness, None)
        cts = _kernels.djn_combine(plains, rands, n, public_key.n_square)
    return EncryptedVector(public_key, as_object_array(cts), int(exponent), peak)


def decrypt_int(
    private_key: PrivateKey, vector: EncryptedVector, workers: WorkerPool | None = None
) -> list[int]:
    """Exact signed integer encodings of ``vector`` (value = encoding * 16**vector.exponent)."""
    private_key.public_key.check_same_key(vector.public_key.fingerprint, "the vector")
    plains = private_key.decrypt_raw(list(vector.ciphertexts), workers)
    return decode_signed(plains, int(private_key.public_key.n))


def decrypt(
    private_key: PrivateKey, vector: EncryptedVector, workers: WorkerPool | None = None
) -> np.ndarray:
    """Decrypt to float64 (``encoding * 16**exponent``, correctly rounded); CRT, on ``workers`` if large."""
    return ints_to_float(decrypt_int(private_key, vector, workers), vector.exponent)


@dataclass(frozen=True, eq=False)
class EncryptedVector:
    """Paillier ciphertexts of ``values = encodings * 16**exponent`` under ``public_key``.

    ``bound`` (optional, local only): every ``|encoding| <= bound``.
    """

    public_key: PublicKey
    ciphertexts: np.ndarray = field(repr=False)
    exponent: int = DEFAULT_EXPONENT
    bound: int | None = None

    __array_ufunc__ = None  # make ``ndarray - vec`` call our __rsub__ instead of broadcasting

    def __post_init__(self) -> None:
        if not isinstance(self.ciphertexts, np.ndarray) or self.ciphertexts.dtype != object:
            object.__setattr__(self, "ciphertexts", as_object_array(self.ciphertexts))
        if self.ciphertexts.ndim != 1:
            raise CryptoError("an EncryptedVector is one-dimensional")
        if self.exponent > 0:
            raise CryptoError(f"the fixed-point exponent must be <= 0, got {self.exponent}")
        if self.bound is not None and self.bound > self.public_key.max_int:
            raise EncodingOverflowError(
                f"result could overflow: its values may reach {self.bound.bit_length()} bits at scale "
                f"16**{self.exponent}, but a {self.public_key.bits}-bit key holds {self.public_key.max_int.bit_length()}"
                " bits (n/3); use coarser exponents or smaller operands"
            )

    # -- basics ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ciphertexts)

    def __repr__(self) -> str:
        return (
            f"EncryptedVector(len={len(self)}, exponent={self.exponent}, "
            f"key={short_fingerprint(self.public_key.fingerprint)})"
        )

    @property
    def n_square(self) -> mpz:
        return self.public_key.n_square

    @property
    def value_bound(self) -> float | None:
        """``bound`` in value units (``bound * 16**exponent``), if known."""
        return None if self.bound is None else math.ldexp(self.bound, LOG2_BASE * self.exponent)

    def _like(
        self, cts: Iterable[mpz], exponent: int | None = None, bound: int | None = None
    ) -> EncryptedVector:
        return EncryptedVector(
            self.public_key, as_object_array(cts), self.exponent if exponent is None else exponent, bound
        )

    def with_value_bound(self, value_bound: float) -> EncryptedVector:
        """The same ciphertexts, declaring ``|value| <= value_bound`` (e.g. for a vector from a peer)."""
        if not (value_bound >= 0 and math.isfinite(value_bound)):
            raise CryptoError(f"value_bound must be a finite non-negative number, got {value_bound}")
        bound = math.ceil(math.ldexp(value_bound, LOG2_BASE * -self.exponent)) + 1
        return EncryptedVector(self.public_key, self.ciphertexts, self.exponent, bound)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> EncryptedVector:
        """A sub-vector (``vec[idx]`` for a mini-batch). An integer index gives a length-1 vector."""
        if isinstance(index, (int, np.integer)):
            picked = self.ciphertexts[[int(index)]]
        elif isinstance(index, slice):
            picked = self.ciphertexts[index]
        else:
            idx = np.asarray(index)
            if idx.dtype != bool and idx.size and idx.dtype.kind not in "iu":
                raise CryptoError(f"cannot index an EncryptedVector with {idx.dtype} values")
            picked = self.ciphertexts[idx.astype(np.intp) if idx.dtype.kind in "iu" or idx.size == 0 else idx]
        return EncryptedVector(self.public_key, picked, self.exponent, self.bound)

    def __iter__(self):  # pragma: no cover - guard against accidental per-element loops
        raise TypeError("EncryptedVector is not iterable element-wise; index or slice it instead")

    def _check_same_key(self, other: EncryptedVector) -> None:
        if other.public_key.fingerprint != self.public_key.fingerprint:
            raise CryptoError(
                f"cannot combine vectors under different keys ({short_fingerprint(self.public_key.fingerprint)} "
                f"and {short_fingerprint(other.public_key.fingerprint)})"
            )

    def aligned(self, exponent: int) -> EncryptedVector:
        """The same values at a finer (lower) exponent: ``c^(16^d)``, ``4 d`` squarings per element."""
        if exponent > self.exponent:
            raise CryptoError(f"cannot move exponent {self.exponent} up to {exponent} without decrypting")
        if exponent == self.exponent:
            return self
        factor = mpz(1) << (LOG2_BASE * (self.exponent - exponent))
        cts = gmpy2.powmod_base_list(list(self.ciphertexts), factor, self.n_square) if len(self) else []
        bound = None if self.bound is None else self.bound * int(factor)
        return self._like(cts, exponent, bound)

    @staticmethod
    def concatenate(vectors: Sequence[EncryptedVector]) -> EncryptedVector:
        """Join vectors under one key; exponents are aligned to the finest one."""
        if not vectors:
            raise CryptoError("nothing to concatenate")
        first = vectors[0]
        for v in vectors[1:]:
            first._check_same_key(v)
        exponent = min(v.exponent for v in vectors)
        parts = [v.aligned(exponent) for v in vectors]
        bounds = [p.bound for p in parts]
        bound = None if any(b is None for b in bounds) else max(bounds, default=0)
        return EncryptedVector(
            first.public_key, np.concatenate([p.ciphertexts for p in parts]) if parts else [], exponent, bound
        )

    # -- arithmetic -------------------------------------------------------------------------------
    def _plain_ints(self, values: Any) -> tuple[list[int], int]:
        arr = np.asarray(values)
        if arr.ndim == 0:
            arr = np.full(len(self), arr.item())
        if arr.shape != (len(self),):
            raise CryptoError(f"plaintext operand has shape {arr.shape}, expected ({len(self)},)")
        return encode_array(arr, self.exponent, int(self.public_key.n))

    def add_plain(self, values: Any) -> EncryptedVector:
        """``[[a + x]]`` for a plaintext vector or scalar ``x`` encoded at this vector's exponent.

        ``x`` is rounded to ``16**exponent`` (error <= half a unit). Cost: ``(1 + m n) c mod n^2 =
        c + n (m c mod n) mod n^2`` -- about one modmul per element. The result keeps ``a``'s
        randomness: re-randomize before sending it.
        """
        ints, peak = self._plain_ints(values)
        n, n2 = self.public_key.n, self.n_square
        out = []
        for c, m in zip(self.ciphertexts, ints, strict=True):
            r = c + n * (m * c % n)
            out.append(r - n2 if r >= n2 else r)
        bound = None if self.bound is None else self.bound + peak
        return self._like(out, bound=bound)

    def add_encrypted(self, other: EncryptedVector) -> EncryptedVector:
        """``[[a + b]]``: one modmul per element, after aligning both to the finer exponent."""
        self._check_same_key(other)
        if len(self) != len(other):
            raise CryptoError(f"cannot add encrypted vectors of lengths {len(self)} and {len(other)}")
        exponent = min(self.exponent, other.exponent)
        a, b = self.aligned(exponent), other.aligned(exponent)
        n2 = self.n_square
        out = [x * y % n2 for x, y in zip(a.ciphertexts, b.ciphertexts, strict=True)]
        bound = None if a.bound is None or b.bound is None else a.bound + b.bound
        return self._like(out, exponent, bound)

    def __add__(self, other: Any) -> EncryptedVector:
        if isinstance(other, EncryptedVector):
            return self.add_encrypted(other)
        return self.add_plain(other)

    __radd__ = __add__

    def __neg__(self) -> EncryptedVector:
        """``[[-a]]`` by inverting every ciphertext (Montgomery batch inversion: 3 modmuls each)."""
        try:
            inv = _kernels.batch_invert(list(self.ciphertexts), self.n_square)
        except ZeroDivisionError:
            raise IntegrityError("a ciphertext is not invertible mod n^2 (malformed input)") from None
        return self._like(inv, bound=self.bound)

    def __sub__(self, other: Any) -> EncryptedVector:
        if isinstance(other, EncryptedVector):
            return self.add_encrypted(-other)
        arr = np.asarray(other)
        return self.add_plain(-arr)

    def __rsub__(self, other: Any) -> EncryptedVector:
        return (-self).add_plain(other)

    def __mul__(self, other: Any) -> EncryptedVector:
        """Multiply by a plaintext scalar or (element-wise) by a plaintext vector.

        Scalars use the coarsest exact power-of-16 exponent (0.25 -> 4 * 16**-1), other values are
        rounded at 16**-8; the result's exponent is the sum of both exponents. A multiplier vector
        uses one exponent for all its elements (the coarsest that is exact for all, at most -8).
        """
        if isinstance(other, EncryptedVector):
            raise CryptoError("Paillier cannot multiply two encrypted vectors; multiply by a plaintext")
        arr = np.asarray(other)
        n2 = self.n_square
        if arr.ndim == 0:
            k, e = encode_scalar(arr.item())
            bound = None if self.bound is None else self.bound * abs(k)
            if len(self) == 0:
                return self._like([], self.exponent + e, bound)
            out = gmpy2.powmod_base_list(list(self.ciphertexts), abs(k), n2)
            if k < 0:
                out = _kernels.batch_invert(out, n2)
            return self._like(out, self.exponent + e, bound)
        if arr.shape != (len(self),):
            raise CryptoError(f"multiplier has shape {arr.shape}, expected a scalar or ({len(self)},)")
        e = _common_exponent(arr)
        ints, peak = encode_array(arr, e, int(self.public_key.n))
        out = _kernels.signed_powers(list(self.ciphertexts), ints, n2)
        bound = None if self.bound is None else self.bound * peak
        return self._like(out, self.exponent + e, bound)

    __rmul__ = __mul__

    def sum(self) -> EncryptedVector:
        """``[[sum a]]`` as a length-1 vector: ``len - 1`` modmuls (length 0 gives an encryption of 0)."""
        bound = None if self.bound is None else self.bound * max(len(self), 1)
        if len(self) == 0:
            return self._like([mpz(1)], bound=0)  # trivial (randomness-free) encryption of 0
        return self._like([_kernels.product(list(self.ciphertexts), self.n_square)], bound=bound)

    def dot(self, x: np.ndarray) -> EncryptedVector:
        """``[[x . a]]`` (length 1) with ``x`` encoded exactly where possible; see also :meth:`rdot`."""
        return (self * np.asarray(x)).sum()

    def rdot(
        self,
        matrix: np.ndarray | PreparedMatrix,
        rows: np.ndarray | Sequence[int] | slice | None = None,
        *,
        bits: int = 16,
        workers: WorkerPool | None = None,
        randomness: RandomnessPool | None = None,
        rerandomize: bool = True,
    ) -> EncryptedVector:
        """``[[X[rows]^T a]]`` (length ``k``) by bucket multi-exponentiation; see :mod:`vfl.crypto.multiexp`.

        ``matrix`` is an ``(m, k)`` float array (quantized on the fly to ``bits``-bit signed fixed
        point) or a :class:`PreparedMatrix` from :func:`prepare_matrix` (quantized once, reused across
        epochs). ``rows`` selects the mini-batch rows of the prepared matrix that correspond to this
        vector's elements (``len(rows) == len(self)``). The output is re-randomized unless
        ``rerandomize=False``.
        """
        out, exponent_shift, bound = rdot_ciphertexts(
            list(self.ciphertexts), self.public_key, matrix, rows, self.bound, bits=bits, workers=workers
        )
        result = self._like(out, self.exponent - exponent_shift, bound)
        return result.rerandomize(randomness=randomness) if rerandomize else result

    def rerandomize(
        self, randomness: RandomnessPool | None = None, workers: WorkerPool | None = None
    ) -> EncryptedVector:
        """Same plaintexts, fresh randomness: ``c * h_s^a`` (1 modmul each with a full pool)."""
        if len(self) == 0:
            return self
        if randomness is None and workers is not None and workers.should_split(len(self)):
            pk = self.public_key
            args = (pk.n, pk.h_s, pk.djn_exponent_bits, pk.djn_window)
            out = workers.map_chunks(_kernels.worker_rerandomize, list(self.ciphertexts), args)
        else:
            rands = _randomizers(self.public_key, len(self), randomness, None)
            out = _kernels.multiply_randomizers(list(self.ciphertexts), rands, self.n_square)
        return self._like(out, bound=self.bound)

    # -- wire -------------------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """One ``ciphertext`` column of ``fixed_size_binary(2 * key_bytes)``; exponent and key in metadata.

        The local ``bound`` is *not* sent (it is derived from plaintext magnitudes).
        """
        return ciphertext_table(
            list(self.ciphertexts),
            self.public_key,
            {b"vfl.kind": VECTOR_KIND, _EXPONENT: str(self.exponent).encode()},
        )

    @classmethod
    def from_arrow(
        cls, table: pa.Table, public_key: PublicKey, *, value_bound: float | None = None
    ) -> EncryptedVector:
        """Parse :meth:`to_arrow` output, checking key, type, width and every ciphertext.

        Raises ``CryptoError`` (naming both fingerprints) for a vector under another key and
        ``IntegrityError`` for malformed input. ``value_bound`` declares ``|value| <= value_bound``.
        """
        what = "the encrypted vector"
        meta = read_metadata(table, VECTOR_KIND, public_key, what)
        exponent = int_metadata(meta, _EXPONENT, what)
        if exponent > 0:
            raise IntegrityError(f"{what}: exponent {exponent} is positive; vfl only sends exponents <= 0")
        cts = table_ciphertexts(table, public_key, what)
        vec = cls(public_key, as_object_array(cts), exponent, None)
        return vec if value_bound is None else vec.with_value_bound(value_bound)

    # -- phe interoperability --------------------------------------------------------------------
    def to_phe(self) -> list[phe.EncryptedNumber]:
        """``phe.EncryptedNumber`` objects (same ciphertexts and exponent) under ``public_key.phe``."""
        pk = self.public_key.phe
        return [phe.EncryptedNumber(pk, int(c), self.exponent) for c in self.ciphertexts]

    @classmethod
    def from_phe(cls, numbers: Sequence[phe.EncryptedNumber], public_key: PublicKey) -> EncryptedVector:
        """Collect phe numbers into one vector, aligning their exponents to the finest (and <= 0)."""
        n = int(public_key.n)
        for i, num in enumerate(numbers):
            if int(num.public_key.n) != n:
                raise CryptoError(
                    f"phe number at position {i} is under key {short_fingerprint(_phe_fingerprint(num))}, "
                    f"not {short_fingerprint(public_key.fingerprint)}"
                )
        exponent = min([0, *(int(num.exponent) for num in numbers)])
        n2 = public_key.n_square
        out = []
        for num in numbers:
            c = mpz(num.ciphertext(be_secure=False))
            if num.exponent != exponent:
                c = gmpy2.powmod(c, mpz(1) << (LOG2_BASE * (num.exponent - exponent)), n2)
            out.append(c)
        return cls(public_key, as_object_array(out), exponent, None)


def _phe_fingerprint(number: phe.EncryptedNumber) -> str:
    return fingerprint_of(int(number.public_key.n))


def _common_exponent(arr: np.ndarray) -> int:
    """Coarsest exponent in ``0 .. DEFAULT_SCALAR_EXPONENT`` at which every element of ``arr`` is exact."""
    if arr.dtype.kind in "iub":
        return 0
    values = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise EncodingOverflowError("cannot multiply by non-finite values")
    for e in range(0, DEFAULT_SCALAR_EXPONENT - 1, -1):
        scaled = np.ldexp(values, LOG2_BASE * -e)
        if np.all(scaled == np.rint(scaled)):
            return e
    return DEFAULT_SCALAR_EXPONENT


def concatenate(vectors: Sequence[EncryptedVector]) -> EncryptedVector:
    """Module-level alias of :meth:`EncryptedVector.concatenate`."""
    return EncryptedVector.concatenate(vectors)
