"""Paillier keys for the vector engine: Blum-prime moduli, DJN base, fingerprints, files and wire forms.

A key pair is python-paillier compatible (``g = n + 1``; ``PublicKey.phe`` / ``PrivateKey.phe`` give the
equivalent ``phe`` objects) with two additions:

* the modulus is built from **Blum primes** (``p = q = 3 mod 4``, ``gcd(p-1, q-1) = 2``), which makes
  Damgard-Jurik-Nielsen (DJN) encryption sound: ``h = -x^2 mod n`` generates (with overwhelming
  probability) the large cyclic subgroup of Jacobi-symbol-1 elements of ``Z_n^*``, and every
  ``h_s^a = (h^a)^n mod n^2`` is an ``n``-th residue, i.e. a valid Paillier randomizer;
* the public key carries ``h_s = h^n mod n^2`` so every party encrypts with the same fixed base (and a
  fixed-base window table) instead of one full ``r^n`` exponentiation per value.

**Fingerprint**: lowercase hex SHA-256 of ``n`` as big-endian bytes (``key_bytes`` wide). It names the key
in files, Arrow metadata and error messages.

**Key file** (JSON, UTF-8, private files written with mode 0600, atomically)::

    {"format": "vfl-paillier-key", "version": 1, "kind": "private" | "public", "bits": 2048,
     "fingerprint": "<hex sha256 of n>", "n": "<hex>", "h_s": "<hex>", "p": "<hex>", "q": "<hex>"}

``p`` and ``q`` only in private files. Loading re-checks everything (fingerprint against ``n``,
``p q = n``, Blum form, ``h_s`` range) and raises :class:`vfl.errors.KeyFileError` with one clear line.

**Layering** (python-paillier keeps encoding apart from key material the same way): this module holds
key material and integer-level primitives only (raw CRT decryption of a list of integers, the CRT
constants the key owner's fast encryption needs) and imports none of the ciphertext modules
(``vector``, ``packing``, ``multiexp``, ``randomness``, ``pool``); ``tests/crypto/test_layering.py``
checks it. Encrypting and decrypting vectors live with the ciphertext types:
:func:`vfl.crypto.vector.encrypt` / :func:`~vfl.crypto.vector.decrypt` and
:func:`vfl.crypto.packing.decrypt_packed`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gmpy2
import phe
import pyarrow as pa
from gmpy2 import mpz

from vfl.crypto import _kernels
from vfl.errors import CryptoError, IntegrityError, KeyFileError
from vfl.io import atomic_write_bytes

SUPPORTED_BITS = (1024, 2048, 3072)
KEY_FILE_FORMAT = "vfl-paillier-key"
KEY_FILE_VERSION = 1
_PUBLIC_MAGIC = b"VFLPK\x01"
DJN_WINDOW = 8
"""Fallback window of the fixed-base table (key sizes without an entry in :data:`DJN_WINDOWS`)."""
DJN_WINDOWS = {1024: 12, 2048: 10, 3072: 9}
"""Window of the fixed-base table per key size: the widest whose table stays under ~60 MB per process.

A randomizer costs ``ceil(n_bits / (2 w)) - 1`` modmuls: 42 instead of 63 at 1024 bits (w = 12, 52 MB,
~0.4 s to build) and 102 instead of 127 at 2048 bits (w = 10, 58 MB, ~0.7 s). Measured: -27% and
-20..-40% per randomizer against w = 8; the table is built once per key and process."""


class ChunkRunner(Protocol):
    """What :meth:`PrivateKey.decrypt_raw` needs from a worker pool (``vfl.crypto.pool.WorkerPool`` fits).

    Declared structurally so that this module, which holds key material only, imports none of the
    ciphertext or pool modules (DESIGN.md §8).
    """

    def should_split(self, items: int, weight: float = 1.0) -> bool: ...

    def map_chunks(
        self,
        fn: Callable[..., list[Any]],
        items: Sequence[Any],
        args: tuple[Any, ...] = ...,
        chunks: int | None = ...,
    ) -> list[Any]: ...


def djn_window(bits: int) -> int:
    """The fixed-base window used for an ``bits``-bit modulus (see :data:`DJN_WINDOWS`)."""
    return DJN_WINDOWS.get(int(bits), DJN_WINDOW)


def fingerprint_of(n: int) -> str:
    """Hex SHA-256 of ``n`` as big-endian bytes of the key width."""
    width = (int(n).bit_length() + 7) // 8
    return hashlib.sha256(int(n).to_bytes(width, "big")).hexdigest()


def short_fingerprint(fingerprint: str) -> str:
    """The first 16 hex digits, as used in messages."""
    return fingerprint[:16]


def _public_key_problem(n: int, h_s: int) -> str | None:
    """Return why ``(n, h_s)`` is not a usable public key, or None."""
    if n < 2**1000 or n % 2 == 0:
        return f"the modulus is not a Paillier modulus of at least 1024 bits ({n.bit_length()} bits)"
    n_square = n * n
    if not 1 < h_s < n_square:
        return "the DJN base h_s is outside 1 < h_s < n^2"
    if gmpy2.gcd(h_s, n) != 1 or gmpy2.jacobi(h_s % n, n) != 1:
        return "the DJN base h_s is not of the form (-x^2)^n mod n^2"
    return None


@dataclass(frozen=True, eq=False)
class PublicKey:
    """A Paillier public key ``n`` (``g = n + 1``) with the DJN fixed base ``h_s``.

    Derived values (``n_square``, the phe key) are computed once and cached on the object; the object is
    otherwise immutable and safe to share between threads. The fixed-base table for ``h_s`` belongs to
    the randomness layer (:func:`vfl.crypto.randomness.fixed_base_table`).
    """

    n: mpz = field(repr=False)
    h_s: mpz = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", mpz(self.n))
        object.__setattr__(self, "h_s", mpz(self.h_s))

    # -- derived --------------------------------------------------------------------------------
    @functools.cached_property
    def n_square(self) -> mpz:
        return self.n * self.n

    @property
    def bits(self) -> int:
        """Modulus size in bits (1024, 2048 or 3072 for keys made here)."""
        return int(self.n.bit_length())

    @property
    def key_bytes(self) -> int:
        """Bytes of ``n``; a ciphertext is ``2 * key_bytes`` bytes on the wire."""
        return (self.bits + 7) // 8

    @property
    def max_int(self) -> int:
        """Largest encoding magnitude (``n // 3 - 1``, phe's rule)."""
        return int(self.n // 3 - 1)

    @property
    def djn_exponent_bits(self) -> int:
        """Bits of the DJN randomizer exponent ``a``: ``n_bits / 2`` (1024 for a 2048-bit key).

        ``h`` has order ~``n/4``; exponents of half that size keep a kangaroo-style attack on
        ``a`` at ~``2^(n_bits/4)`` work (far above the modulus' factoring security) while halving
        the cost of a randomizer compared with full-size exponents.
        """
        return self.bits // 2

    @property
    def djn_window(self) -> int:
        """Window of this key's fixed-base table (:func:`djn_window`)."""
        return djn_window(self.bits)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hex SHA-256 of ``n`` (big-endian)."""
        return fingerprint_of(int(self.n))

    @functools.cached_property
    def phe(self) -> phe.PaillierPublicKey:
        """The equivalent ``phe.PaillierPublicKey``."""
        return phe.PaillierPublicKey(int(self.n))

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.bits}, fingerprint={short_fingerprint(self.fingerprint)})"

    # -- checks -------------------------------------------------------------------------------
    def check_same_key(self, fingerprint: str, what: str) -> None:
        """Raise CryptoError naming both fingerprints if ``fingerprint`` is not this key's."""
        if fingerprint != self.fingerprint:
            raise CryptoError(
                f"{what} is encrypted under key {short_fingerprint(fingerprint)} but this public key is "
                f"{short_fingerprint(self.fingerprint)}; it belongs to another job or arbiter"
            )

    # -- serialization --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Compact wire form: magic, ``key_bytes`` (u16), ``n`` and ``h_s`` big-endian."""
        kb = self.key_bytes
        return (
            _PUBLIC_MAGIC
            + struct.pack(">H", kb)
            + self.n.to_bytes(kb, "big")
            + self.h_s.to_bytes(2 * kb, "big")
        )

    @classmethod
    def from_bytes(cls, data: bytes, expected_fingerprint: str | None = None) -> PublicKey:
        """Parse :meth:`to_bytes`; raises IntegrityError if malformed or not the expected key."""
        head = len(_PUBLIC_MAGIC) + 2
        if len(data) < head or data[: len(_PUBLIC_MAGIC)] != _PUBLIC_MAGIC:
            raise IntegrityError("public key bytes do not start with the vfl public-key header")
        (kb,) = struct.unpack(">H", data[len(_PUBLIC_MAGIC) : head])
        if len(data) != head + 3 * kb:
            raise IntegrityError(f"public key bytes have length {len(data)}, expected {head + 3 * kb}")
        n = int.from_bytes(data[head : head + kb], "big")
        h_s = int.from_bytes(data[head + kb :], "big")
        return cls._checked(n, h_s, expected_fingerprint, IntegrityError, "the received public key")

    def to_arrow(self) -> pa.Table:
        """One-row Arrow table (``n``, ``h_s`` as big-endian binary) with the fingerprint in the metadata."""
        kb = self.key_bytes
        table = pa.table(
            {
                "n": pa.array([self.n.to_bytes(kb, "big")], type=pa.binary(kb)),
                "h_s": pa.array([self.h_s.to_bytes(2 * kb, "big")], type=pa.binary(2 * kb)),
            }
        )
        return table.replace_schema_metadata(
            {b"vfl.kind": b"paillier.public_key", b"vfl.paillier.key_fingerprint": self.fingerprint.encode()}
        )

    @classmethod
    def from_arrow(cls, table: pa.Table, expected_fingerprint: str | None = None) -> PublicKey:
        """Parse :meth:`to_arrow`; raises IntegrityError if malformed or not the expected key."""
        meta = table.schema.metadata or {}
        if meta.get(b"vfl.kind") != b"paillier.public_key" or table.num_rows != 1:
            raise IntegrityError("message is not a vfl Paillier public key (wrong kind or row count)")
        if "n" not in table.column_names or "h_s" not in table.column_names:
            raise IntegrityError("public key table lacks the 'n' or 'h_s' column")
        n_raw, h_raw = table.column("n")[0].as_py(), table.column("h_s")[0].as_py()
        if not isinstance(n_raw, bytes) or not isinstance(h_raw, bytes):
            raise IntegrityError("public key columns must be binary")
        key = cls._checked(
            int.from_bytes(n_raw, "big"),
            int.from_bytes(h_raw, "big"),
            expected_fingerprint,
            IntegrityError,
            "the received public key",
        )
        stated = meta.get(b"vfl.paillier.key_fingerprint", b"").decode(errors="replace")
        if stated != key.fingerprint:
            raise IntegrityError(
                f"public key metadata names fingerprint {short_fingerprint(stated)!r} but the modulus has "
                f"{short_fingerprint(key.fingerprint)}; the message was altered"
            )
        return key

    @classmethod
    def _checked(
        cls, n: int, h_s: int, expected_fingerprint: str | None, error: type[Exception], what: str
    ) -> PublicKey:
        problem = _public_key_problem(n, h_s)
        if problem:
            raise error(f"{what} is unusable: {problem}")
        key = cls(mpz(n), mpz(h_s))
        if expected_fingerprint is not None and key.fingerprint != expected_fingerprint:
            raise error(
                f"{what} has fingerprint {short_fingerprint(key.fingerprint)}, expected "
                f"{short_fingerprint(expected_fingerprint)}; it belongs to another key"
            )
        return key

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the public key file (JSON, atomically)."""
        _write_key_file(Path(path), self._file_fields("public"), private=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_fingerprint: str | None = None) -> PublicKey:
        """Read a public (or private) key file's public part; KeyFileError if damaged or mismatched."""
        path = Path(path)
        data = _read_key_file(path)
        return _public_from_fields(path, data, expected_fingerprint)

    def _file_fields(self, kind: str) -> dict[str, Any]:
        return {
            "format": KEY_FILE_FORMAT,
            "version": KEY_FILE_VERSION,
            "kind": kind,
            "bits": self.bits,
            "fingerprint": self.fingerprint,
            "n": format(int(self.n), "x"),
            "h_s": format(int(self.h_s), "x"),
        }


@dataclass(frozen=True, eq=False)
class PrivateKey:
    """The factorization of ``n`` plus CRT constants (python-paillier's ``hp``, ``hq``, ``p^-1 mod q``)."""

    public_key: PublicKey
    p: mpz = field(repr=False)
    q: mpz = field(repr=False)
    hp: mpz = field(init=False, repr=False)
    hq: mpz = field(init=False, repr=False)
    p_inverse: mpz = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p, q = mpz(self.p), mpz(self.q)
        if p > q:  # phe orders the primes the same way; the CRT below needs only consistency
            p, q = q, p
        if p * q != self.public_key.n:
            raise CryptoError("p * q does not equal the public key's modulus")
        n = self.public_key.n
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        # h(x) = L_x(g^(x-1) mod x^2)^-1 mod x, with g = n + 1 (python-paillier's h_function).
        object.__setattr__(self, "hp", gmpy2.invert((gmpy2.powmod(n + 1, p - 1, p * p) - 1) // p, p))
        object.__setattr__(self, "hq", gmpy2.invert((gmpy2.powmod(n + 1, q - 1, q * q) - 1) // q, q))
        object.__setattr__(self, "p_inverse", gmpy2.invert(p, q))

    def __repr__(self) -> str:
        return f"PrivateKey(bits={self.public_key.bits}, fingerprint={short_fingerprint(self.fingerprint)})"

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint

    @functools.cached_property
    def phe(self) -> phe.PaillierPrivateKey:
        """The equivalent ``phe.PaillierPrivateKey``."""
        return phe.PaillierPrivateKey(self.public_key.phe, int(self.p), int(self.q))

    # -- integer-level primitives ---------------------------------------------------------------
    @functools.cached_property
    def p_square(self) -> mpz:
        return self.p * self.p

    @functools.cached_property
    def q_square(self) -> mpz:
        return self.q * self.q

    @functools.cached_property
    def p_square_inverse(self) -> mpz:
        """``(p^2)^-1 mod q^2``: Garner's constant for recombining residues mod ``p^2`` and ``q^2``."""
        return gmpy2.invert(self.p_square, self.q_square)

    @property
    def crt_window(self) -> int:
        """Window of the key owner's half-size tables mod ``p^2`` and ``q^2``: the public table's window.

        Both tables together hold about what the public table holds (62 MB at 2048 bits: ``e`` as
        ``n_bits/2``-bit integers, ``u`` as packed 32-bit limbs) and take ~0.9 s to build.
        """
        return self.public_key.djn_window

    @property
    def crt_args(self) -> tuple[mpz, mpz, mpz, mpz, mpz]:
        """``(p, q, hp, hq, p^-1 mod q)``: the arguments of :func:`vfl.crypto._kernels.crt_decrypt`."""
        return (self.p, self.q, self.hp, self.hq, self.p_inverse)

    def decrypt_raw(self, ciphertexts: Sequence[mpz], workers: ChunkRunner | None = None) -> list[mpz]:
        """Plaintexts in ``[0, n)`` of raw ciphertexts (CRT: two half-size exponentiations each).

        Ciphertext *types* are decrypted by :func:`vfl.crypto.vector.decrypt` and
        :func:`vfl.crypto.packing.decrypt_packed`, which call this.
        """
        args = self.crt_args
        if workers is not None and workers.should_split(len(ciphertexts), weight=3.0):
            return workers.map_chunks(_kernels.crt_decrypt, ciphertexts, args)
        return _kernels.crt_decrypt(list(ciphertexts), *args)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key file (JSON, mode 0600, atomically)."""
        fields = self.public_key._file_fields("private")
        fields["p"] = format(int(self.p), "x")
        fields["q"] = format(int(self.q), "x")
        _write_key_file(Path(path), fields, private=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_fingerprint: str | None = None) -> PrivateKey:
        """Read a private key file; KeyFileError if missing, damaged, public-only or another key."""
        path = Path(path)
        data = _read_key_file(path)
        if data.get("kind") != "private":
            raise KeyFileError(f"key file {path} holds only a public key; the private key is needed here")
        public = _public_from_fields(path, data, expected_fingerprint)
        p, q = _hex_field(path, data, "p"), _hex_field(path, data, "q")
        if p * q != public.n:
            raise KeyFileError(f"key file {path} is damaged: its primes do not multiply to its modulus")
        if p % 4 != 3 or q % 4 != 3 or not gmpy2.is_prime(p) or not gmpy2.is_prime(q):
            raise KeyFileError(f"key file {path} is damaged: its primes are not Blum primes (3 mod 4)")
        return cls(public, mpz(p), mpz(q))


def _write_key_file(path: Path, fields: dict[str, Any], private: bool) -> None:
    text = json.dumps(fields, indent=1) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), mode=0o600 if private else 0o644)


def _read_key_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise KeyFileError(f"key file {path} is damaged: it is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT:
        raise KeyFileError(f"{path} is not a vfl Paillier key file (format field missing or different)")
    if data.get("version") != KEY_FILE_VERSION:
        raise KeyFileError(f"key file {path} has version {data.get('version')!r}; this vfl reads version 1")
    return data


def _hex_field(path: Path, data: dict[str, Any], name: str) -> int:
    raw = data.get(name)
    if not isinstance(raw, str):
        raise KeyFileError(f"key file {path} is damaged: field {name!r} is missing")
    try:
        return int(raw, 16)
    except ValueError:
        raise KeyFileError(f"key file {path} is damaged: field {name!r} is not hexadecimal") from None


def _public_from_fields(path: Path, data: dict[str, Any], expected_fingerprint: str | None) -> PublicKey:
    n, h_s = _hex_field(path, data, "n"), _hex_field(path, data, "h_s")
    stored = data.get("fingerprint")
    actual = fingerprint_of(n)
    if stored != actual:
        raise KeyFileError(
            f"key file {path} is damaged: its stored fingerprint {short_fingerprint(str(stored))} does not "
            f"match its modulus ({short_fingerprint(actual)})"
        )
    problem = _public_key_problem(n, h_s)
    if problem:
        raise KeyFileError(f"key file {path} is damaged: {problem}")
    if expected_fingerprint is not None and actual != expected_fingerprint:
        raise KeyFileError(
            f"key file {path} holds key {short_fingerprint(actual)}, expected "
            f"{short_fingerprint(expected_fingerprint)}; it belongs to another federation or job"
        )
    return PublicKey(mpz(n), mpz(h_s))


def _blum_prime(bits: int) -> mpz:
    """A random prime of exactly ``bits`` bits, top two bits set, ``= 3 mod 4``."""
    while True:
        candidate = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 3
        p = gmpy2.next_prime(candidate)
        if p % 4 == 3 and p.bit_length() == bits and gmpy2.is_prime(p, 50):
            return p


def generate_keypair(bits: int = 2048) -> tuple[PublicKey, PrivateKey]:
    """A fresh key pair from Blum primes; ``bits`` is 1024 (tests only), 2048 (default) or 3072.

    ``n = p q`` has exactly ``bits`` bits; ``gcd(p-1, q-1) = 2``. The DJN base is ``h_s = (-x^2)^n mod
    n^2`` for a uniform secret ``x`` that is then discarded. Takes well under a second at 2048 bits.
    """
    if bits not in SUPPORTED_BITS:
        raise CryptoError(f"unsupported key size {bits}; use one of {', '.join(map(str, SUPPORTED_BITS))}")
    half = bits // 2
    while True:
        p = _blum_prime(half)
        q = _blum_prime(half)
        if p == q or gmpy2.gcd(p - 1, q - 1) != 2:
            continue
        n = p * q
        if n.bit_length() == bits:
            break
    while True:
        x = mpz(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(x, n) == 1:
            break
    h = n - x * x % n  # -x^2 mod n
    h_s = gmpy2.powmod(h, n, n * n)
    public = PublicKey(n, h_s)
    return public, PrivateKey(public, p, q)
