"""The Paillier vector engine (DESIGN.md §8).

phe is the key and format layer at the edges; the arithmetic runs on raw gmpy2 integers over whole
vectors. Entry points:

* :func:`generate_keypair` -> (:class:`PublicKey`, :class:`PrivateKey`); keys save/load as JSON files
  with a SHA-256 fingerprint of ``n``; public keys travel as bytes or a one-row Arrow table.
* :meth:`PublicKey.encrypt` -> :class:`EncryptedVector` (fixed point, one power-of-16 exponent, DJN
  randomness from a fixed-base table or a :class:`RandomnessPool`).
* :class:`EncryptedVector`: ``+``, ``-``, ``*`` plaintext, ``sum``, ``dot``, ``rdot`` (``X^T [[d]]`` by
  bucket multi-exponentiation, with :func:`prepare_matrix`), indexing, ``concatenate``,
  ``rerandomize``, ``to_arrow`` / ``from_arrow``, ``to_phe`` / ``from_phe``.
* :func:`mask_and_pack` -> (:class:`PackedCiphertexts`, :class:`MaskState`);
  :meth:`PrivateKey.decrypt_packed`; :meth:`MaskState.unmask`; :func:`ints_to_arrow` /
  :func:`ints_from_arrow` for the arbiter's reply.
* :class:`WorkerPool`: explicit process pool for large vectors (pass ``workers=``).
"""

from vfl.crypto.arrow import ints_from_arrow, ints_to_arrow
from vfl.crypto.encoding import DEFAULT_EXPONENT, exponent_for_bits
from vfl.crypto.keys import PrivateKey, PublicKey, fingerprint_of, generate_keypair
from vfl.crypto.multiexp import PreparedMatrix, prepare_matrix
from vfl.crypto.packing import MaskState, PackedCiphertexts, mask_and_pack
from vfl.crypto.pool import WorkerPool
from vfl.crypto.randomness import FixedBaseTable, RandomnessPool
from vfl.crypto.vector import EncryptedVector, concatenate

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
    "exponent_for_bits",
    "fingerprint_of",
    "generate_keypair",
    "ints_from_arrow",
    "ints_to_arrow",
    "mask_and_pack",
    "prepare_matrix",
]
