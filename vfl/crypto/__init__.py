"""The Paillier vector engine (DESIGN.md §8).

phe is the key and format layer at the edges; the arithmetic runs on raw gmpy2 integers over whole
vectors. Key material is kept apart from ciphertexts (as python-paillier keeps encoding apart from
keys): :mod:`~vfl.crypto.keys` imports none of the ciphertext modules, and every operation on a
ciphertext type is a function next to that type, taking the key as its first argument. Entry points:

* :func:`generate_keypair` -> (:class:`PublicKey`, :class:`PrivateKey`); keys save/load as JSON files
  with a SHA-256 fingerprint of ``n``; public keys travel as bytes or a one-row Arrow table.
* :func:`encrypt` ``(key, values)`` -> :class:`EncryptedVector` (fixed point, one power-of-16
  exponent, DJN randomness from a fixed-base table or a :class:`RandomnessPool`; with the
  :class:`PrivateKey`, the key owner's CRT fast path). :func:`decrypt` / :func:`decrypt_int`
  ``(private_key, vector)``.
* :class:`EncryptedVector`: ``+``, ``-``, ``*`` plaintext, ``sum``, ``dot``, ``rdot`` (``X^T [[d]]`` by
  bucket multi-exponentiation, with :func:`prepare_matrix`), indexing, ``concatenate``,
  ``rerandomize``, ``to_arrow`` / ``from_arrow``, ``to_phe`` / ``from_phe``.
* :func:`mask_and_pack` -> (:class:`PackedCiphertexts`, :class:`MaskState`);
  :func:`decrypt_packed` ``(private_key, packed)``; :meth:`MaskState.unmask`; :func:`ints_to_arrow` /
  :func:`ints_from_arrow` for the arbiter's reply.
* :func:`randomizers` ``(key, count)``; :class:`RandomnessPool` (``fill``, ``add``, ``take``);
  :func:`randomizers_to_arrow` / :func:`randomizers_from_arrow` for a key owner's randomizer stream.
* :class:`WorkerPool`: explicit process pool for large vectors (pass ``workers=``); its workers exit
  when their party dies.
"""

from vfl.crypto.arrow import ints_from_arrow, ints_to_arrow
from vfl.crypto.encoding import DEFAULT_EXPONENT, exponent_for_bits
from vfl.crypto.keys import PrivateKey, PublicKey, fingerprint_of, generate_keypair
from vfl.crypto.multiexp import PreparedMatrix, prepare_matrix
from vfl.crypto.packing import MaskState, PackedCiphertexts, decrypt_packed, mask_and_pack
from vfl.crypto.pool import WorkerPool
from vfl.crypto.randomness import (
    FixedBaseTable,
    RandomnessPool,
    fixed_base_table,
    randomizers,
    randomizers_from_arrow,
    randomizers_to_arrow,
)
from vfl.crypto.vector import EncryptedVector, concatenate, decrypt, decrypt_int, encrypt

__all__ = [
    "DEFAULT_EXPONENT",
    "EncryptedVector",
    "FixedBaseTable",
    "MaskState",
    "PackedCiphertexts",
    "PreparedMatrix",
    "PrivateKey",
    "PublicKey",
    "RandomnessPool",
    "WorkerPool",
    "concatenate",
    "decrypt",
    "decrypt_int",
    "decrypt_packed",
    "encrypt",
    "exponent_for_bits",
    "fingerprint_of",
    "fixed_base_table",
    "generate_keypair",
    "ints_from_arrow",
    "ints_to_arrow",
    "mask_and_pack",
    "prepare_matrix",
    "randomizers",
    "randomizers_from_arrow",
    "randomizers_to_arrow",
]
