"""Mechanisms of ECDH private set intersection (DESIGN.md §5).

- ``ids``: canonical id strings, normalization settings, validation (missing ids, duplicates);
- ``hashing``: ``H(id) = SHA-512(b"vfl/psi/v1" | salt | id)[:32]`` as X25519 u-coordinates;
- ``ecdh``: chunked, parallel X25519 scalar multiplication with a fresh secret scalar per job;
- ``options``: ``PsiOptions`` and the per-party ``PsiResult``.

The message flow itself lives in ``protocols.psi``.
"""

from vfl.psi.ecdh import ScalarMultiplier, SecretScalar, multiply_buffer
from vfl.psi.hashing import DOMAIN, POINT_DTYPE, hash_id, hash_ids
from vfl.psi.ids import Normalization, PreparedIds, as_id_series, prepare_ids
from vfl.psi.options import PsiOptions, PsiResult

__all__ = [
    "DOMAIN",
    "POINT_DTYPE",
    "Normalization",
    "PreparedIds",
    "PsiOptions",
    "PsiResult",
    "ScalarMultiplier",
    "SecretScalar",
    "as_id_series",
    "hash_id",
    "hash_ids",
    "multiply_buffer",
    "prepare_ids",
]
