"""Fixed-point encoding with one power-of-16 scale per vector (python-paillier's convention).

A real value ``x`` is carried as the integer ``round(x * 16**-exponent)`` with ``exponent <= 0``, so
``x ~ encoding * 16**exponent`` -- exactly how ``phe.EncodedNumber`` decodes it, which is what makes
our ciphertexts readable by phe. Unlike phe's default float encoding, the exponent is chosen once per
vector and never from a value's magnitude: a per-value exponent leaks the magnitude on the wire and
forces exponent alignment on every homomorphic addition.

Default precision: ``DEFAULT_EXPONENT = -8``, i.e. a scale of ``16**8 = 2**32``; the rounding error of
each encoded value is at most ``2**-33 ~ 1.2e-10``. Pass ``exponent=exponent_for_bits(b)`` for ``b``
fractional bits instead.

Signed integers are represented modulo ``n`` as in phe: values in ``[0, max_int]`` are non-negative,
values in ``[n - max_int, n)`` are negative, with ``max_int = n // 3 - 1``; anything else decrypts as an
overflow. Encryption refuses (``EncodingOverflowError``) any value whose encoding exceeds ``max_int``
before encrypting anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from vfl.errors import CryptoError, EncodingOverflowError

BASE = 16
LOG2_BASE = 4
DEFAULT_EXPONENT = -8
"""Default vector exponent: scale ``2**32``, rounding error <= ``2**-33`` per value."""

DEFAULT_SCALAR_EXPONENT = -8
"""Finest exponent used to encode a plaintext multiplier; dyadic multipliers (0.25, 3.0) use the
coarsest exponent that represents them exactly, so ``[[z]] * 0.25`` costs exponent -1, not -8."""


def exponent_for_bits(fractional_bits: int) -> int:
    """The power-of-16 exponent giving at least ``fractional_bits`` bits after the binary point."""
    if fractional_bits < 0:
        raise ValueError("fractional_bits must be >= 0")
    return -((fractional_bits + LOG2_BASE - 1) // LOG2_BASE)


def max_int(n: int) -> int:
    """Largest encoding magnitude that decrypts unambiguously (python-paillier: ``n // 3 - 1``)."""
    return n // 3 - 1


def _check_exponent(exponent: int) -> int:
    if not isinstance(exponent, (int, np.integer)) or isinstance(exponent, bool):
        raise CryptoError(f"the fixed-point exponent must be an integer, got {exponent!r}")
    exponent = int(exponent)
    if exponent > 0:
        raise CryptoError(
            f"the fixed-point exponent must be <= 0 (value = encoding * 16**exponent), got {exponent}"
        )
    return exponent


def encode_array(values: np.ndarray, exponent: int, n: int) -> tuple[list[int], int]:
    """Encode a 1-D array as signed Python ints at ``16**exponent``; returns ``(encodings, max |encoding|)``.

    Float input is rounded to nearest (ties to even); integer input is exact. Raises
    ``EncodingOverflowError`` naming the worst value if any ``|encoding| > n // 3 - 1``, and for NaN/inf.
    """
    exponent = _check_exponent(exponent)
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise CryptoError(f"expected a 1-D vector of values, got shape {arr.shape}")
    limit = max_int(n)
    if arr.size == 0:
        return [], 0
    shift = LOG2_BASE * -exponent
    if arr.dtype.kind in "iub":
        ints = [int(v) << shift for v in arr.tolist()]
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float64, copy=False)
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise EncodingOverflowError(
                f"cannot encrypt a non-finite value ({arr[bad]} at position {bad}); nothing was encrypted"
            )
        with np.errstate(over="ignore"):
            scaled = np.rint(np.ldexp(arr, shift))  # exact power-of-two scaling, then round (ties to even)
        peak = float(np.max(np.abs(scaled)))
        if peak < 2.0**62:
            ints = scaled.astype(np.int64).tolist()
        elif math.isfinite(peak):
            ints = [int(v) for v in scaled.tolist()]  # int(float) is exact
        else:  # beyond float range after scaling: round exactly in Python (rare, large keys only)
            ints = [round(Fraction(v) * (1 << shift)) for v in arr.tolist()]
    elif arr.dtype == object:
        return encode_array(np.asarray(arr, dtype=np.float64), exponent, n)
    else:
        raise CryptoError(f"cannot encrypt values of dtype {arr.dtype}; use floats or integers")
    peak_int = max(abs(min(ints)), abs(max(ints)))
    if peak_int > limit:
        worst = int(np.argmax(np.abs(np.asarray(ints, dtype=object))))
        raise EncodingOverflowError(
            f"value {arr[worst]!r} at position {worst} is too large for a {n.bit_length()}-bit key at scale "
            f"16**{exponent}: its encoding needs {peak_int.bit_length()} bits but must stay below n/3 "
            f"({limit.bit_length()} bits); use a coarser exponent or rescale the data. Nothing was encrypted."
        )
    return ints, peak_int


def encode_scalar(value: float | int, max_exponent_depth: int = DEFAULT_SCALAR_EXPONENT) -> tuple[int, int]:
    """Encode a plaintext multiplier as ``(integer, exponent)`` with the coarsest exact exponent.

    Integers encode at exponent 0; dyadic fractions at the coarsest power of 16 that is exact (0.25 ->
    ``(4, -1)``); anything else is rounded at ``max_exponent_depth`` (default -8, error <= 2**-33).
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), 0
    v = float(value)
    if not math.isfinite(v):
        raise EncodingOverflowError(f"cannot multiply by a non-finite value {v}")
    for e in range(0, max_exponent_depth - 1, -1):
        scaled = math.ldexp(v, LOG2_BASE * -e)
        if scaled == int(scaled):
            return int(scaled), e
    return int(round(math.ldexp(v, LOG2_BASE * -max_exponent_depth))), max_exponent_depth


def decode_signed(plaintexts: Sequence[int], n: int) -> list[int]:
    """Map raw plaintexts in ``[0, n)`` to signed ints (phe's rule); overflowed values raise CryptoError."""
    limit = max_int(n)
    low = n - limit
    out = []
    for i, m in enumerate(plaintexts):
        if m <= limit:
            out.append(int(m))
        elif m >= low:
            out.append(int(m) - n)
        else:
            raise CryptoError(
                f"decrypted value at position {i} overflowed the fixed-point range (|encoding| >= n/3); "
                "the computation exceeded the key's capacity or the ciphertext was not made by this engine"
            )
    return out


def ints_to_float(ints: Sequence[int], exponent: int) -> np.ndarray:
    """``ints * 16**exponent`` as float64, correctly rounded also for integers beyond 2**63."""
    if len(ints) == 0:
        return np.zeros(0, dtype=np.float64)
    peak = max(abs(min(ints)), abs(max(ints)))
    if peak < 2**62:
        return np.ldexp(np.asarray(ints, dtype=np.int64).astype(np.float64), LOG2_BASE * exponent)
    if exponent <= 0:
        denom = 1 << (LOG2_BASE * -exponent)
        try:
            return np.asarray([i / denom for i in ints], dtype=np.float64)  # int/int is correctly rounded
        except OverflowError as exc:
            raise CryptoError(f"a decrypted value does not fit in a float64 at scale 16**{exponent}") from exc
    return np.asarray([float(i << (LOG2_BASE * exponent)) for i in ints], dtype=np.float64)
