"""Hashing ids to Curve25519 u-coordinates with domain separation and a per-job salt.

``H(id) = SHA-512(b"vfl/psi/v1" | salt | utf8(id))[:32]``, read as an X25519 u-coordinate (X25519
ignores the top bit and reduces mod p, identically at every party). The domain tag keeps these
hashes apart from any other use of SHA-512 on ids; the job salt makes them useless outside the job
(no precomputed dictionary of hashed e-mail addresses or phone numbers applies). The hashes never
leave the party: only their multiples by a secret scalar do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

DOMAIN = b"vfl/psi/v1"
POINT_BYTES = 32
POINT_DTYPE = np.dtype(f"S{POINT_BYTES}")
#: Salt length the guest draws for a job (bytes).
SALT_BYTES = 32


def hash_id(text: str, salt: bytes) -> bytes:
    """``H(id)`` for one normalized id string (for tests and documentation; use ``hash_ids`` for columns)."""
    return hashlib.sha512(DOMAIN + salt + text.encode("utf-8")).digest()[:POINT_BYTES]


def hash_ids(normalized: pa.ChunkedArray | pa.Array | Iterable[str], salt: bytes) -> np.ndarray:
    """``H(id)`` for every normalized id, as a ``S32`` NumPy array (one 32-byte row per id, in order).

    Works chunk by chunk so only one chunk of Python strings is alive at a time. Never turn the
    result into Python bytes with ``tolist()``: NumPy strips trailing zero bytes from ``S32`` items.
    """
    prefix = DOMAIN + salt
    sha512 = hashlib.sha512
    if isinstance(normalized, pa.Array):
        normalized = pa.chunked_array([normalized])
    batches = (
        (chunk.to_pylist() for chunk in normalized.chunks)
        if isinstance(normalized, pa.ChunkedArray)
        else [list(normalized)]
    )
    total = len(normalized) if isinstance(normalized, pa.ChunkedArray) else None
    if total is None:
        batches = list(batches)
        total = sum(len(b) for b in batches)
    out = np.empty(total, dtype=POINT_DTYPE)
    position = 0
    for strings in batches:
        digests = b"".join([sha512(prefix + s.encode("utf-8")).digest()[:POINT_BYTES] for s in strings])
        out[position : position + len(strings)] = np.frombuffer(digests, dtype=POINT_DTYPE)
        position += len(strings)
    return out
