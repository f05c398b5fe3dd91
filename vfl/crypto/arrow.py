"""Arrow wire format of ciphertexts: big-endian ``fixed_size_binary(2 * key_bytes)`` columns.

Conversion goes through one contiguous bytes buffer in both directions (``mpz.to_bytes`` joined;
``mpz.from_bytes`` over memoryview slices of the Arrow data buffer): ~2-3 us per ciphertext, so
30,000 ciphertexts take well under 0.1 s plus validation.

Validation of received ciphertexts: each must be ``< n^2`` and coprime to ``n``. Coprimality of the whole column is checked with ONE
gcd of ``prod (c_i mod n) mod n`` against ``n`` (a 2048-bit modmul per value); only when that fails is
the offending position searched for.

Schema metadata keys (bytes): ``vfl.kind``, ``vfl.paillier.key_fingerprint``, ``vfl.paillier.exponent``
(vectors), ``vfl.paillier.slot_bits`` / ``vfl.paillier.count`` / ``vfl.paillier.slots_per_ciphertext``
(packed messages), ``vfl.paillier.format_version`` = ``1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
import pyarrow as pa
from gmpy2 import mpz

from vfl.crypto.keys import PublicKey, short_fingerprint
from vfl.errors import IntegrityError

FORMAT_VERSION = b"1"
KIND = b"vfl.kind"
FINGERPRINT = b"vfl.paillier.key_fingerprint"
VERSION = b"vfl.paillier.format_version"
CIPHERTEXT_COLUMN = "ciphertext"


def ciphertexts_to_array(ciphertexts: Sequence[mpz], width: int) -> pa.FixedSizeBinaryArray:
    """Big-endian fixed-width binary array from one joined buffer."""
    buf = b"".join([c.to_bytes(width, "big") for c in ciphertexts])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(ciphertexts), [None, pa.py_buffer(buf)])


def ciphertext_table(
    ciphertexts: Sequence[mpz], public_key: PublicKey, metadata: dict[bytes, bytes]
) -> pa.Table:
    """A one-column table of ciphertexts with the key fingerprint and ``metadata`` in the schema."""
    arr = ciphertexts_to_array(ciphertexts, 2 * public_key.key_bytes)
    meta = {VERSION: FORMAT_VERSION, FINGERPRINT: public_key.fingerprint.encode(), **metadata}
    return pa.Table.from_arrays([arr], names=[CIPHERTEXT_COLUMN]).replace_schema_metadata(meta)


def read_metadata(table: pa.Table, kind: bytes, public_key: PublicKey, what: str) -> dict[bytes, bytes]:
    """Check type, kind, version and key of a ciphertext table; returns its schema metadata."""
    if not isinstance(table, pa.Table):
        raise IntegrityError(f"{what}: expected a pyarrow Table, got {type(table).__name__}")
    meta = table.schema.metadata
    if not meta or KIND not in meta:
        raise IntegrityError(
            f"{what}: the table has no vfl schema metadata (it is not a vfl ciphertext message)"
        )
    if meta[KIND] != kind:
        raise IntegrityError(
            f"{what}: expected a {kind.decode()} message, got {meta[KIND].decode(errors='replace')}"
        )
    if meta.get(VERSION) != FORMAT_VERSION:
        raise IntegrityError(f"{what}: unsupported format version {meta.get(VERSION)!r}, expected 1")
    if FINGERPRINT not in meta:
        raise IntegrityError(f"{what}: the metadata lacks the key fingerprint")
    public_key.check_same_key(meta[FINGERPRINT].decode(errors="replace"), what)
    return meta


def int_metadata(meta: dict[bytes, bytes], key: bytes, what: str) -> int:
    """An integer metadata field, or IntegrityError naming it."""
    raw = meta.get(key)
    if raw is None:
        raise IntegrityError(f"{what}: the metadata lacks {key.decode()}")
    try:
        return int(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{what}: metadata {key.decode()} is not an integer ({raw!r})") from None


def table_ciphertexts(table: pa.Table, public_key: PublicKey, what: str) -> list[mpz]:
    """Parse and validate the ciphertext column (width, nulls, ``c < n^2``, ``gcd(c, n) = 1``)."""
    width = 2 * public_key.key_bytes
    if CIPHERTEXT_COLUMN not in table.column_names:
        raise IntegrityError(f"{what}: the table has no {CIPHERTEXT_COLUMN!r} column")
    col = table.column(CIPHERTEXT_COLUMN)
    if col.type != pa.binary(width):
        raise IntegrityError(
            f"{what}: ciphertext column has type {col.type}, expected fixed_size_binary[{width}] "
            f"for a {public_key.bits}-bit key"
        )
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        raise IntegrityError(f"{what}: the ciphertext column contains {arr.null_count} nulls")
    count = len(arr)
    if count == 0:
        return []
    data = memoryview(arr.buffers()[1])[arr.offset * width : (arr.offset + count) * width]
    limit = public_key.n_square
    out = [mpz.from_bytes(data[i * width : (i + 1) * width], "big") for i in range(count)]
    for i, c in enumerate(out):
        if c >= limit:
            raise IntegrityError(
                f"{what}: ciphertext at position {i} is not below n^2 (not a ciphertext of this key)"
            )
    check_coprime(out, public_key.n, what)
    return out


def check_coprime(ciphertexts: Sequence[mpz], n: mpz, what: str) -> None:
    """IntegrityError if some ciphertext shares a factor with ``n`` (one gcd for the whole vector)."""
    acc = mpz(1)
    for c in ciphertexts:
        acc = acc * c % n  # 2048-bit modmul per value
    if gmpy2.gcd(acc, n) == 1:
        return
    for i, c in enumerate(ciphertexts):
        if gmpy2.gcd(c, n) != 1:
            raise IntegrityError(
                f"{what}: ciphertext at position {i} is not invertible mod n (zero or malformed)"
            )


def ints_to_arrow(values: Sequence[int], *, kind: bytes = b"paillier.unpacked_slots") -> pa.Table:
    """Non-negative integers (e.g. decrypted masked slots) as a big-endian fixed-width binary column."""
    values = [int(v) for v in values]
    if any(v < 0 for v in values):
        raise IntegrityError("only non-negative integers can be sent as slots")
    width = max(1, (max(values, default=0).bit_length() + 7) // 8)
    buf = b"".join([v.to_bytes(width, "big") for v in values])
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(buf)])
    return pa.Table.from_arrays([arr], names=["value"]).replace_schema_metadata(
        {KIND: kind, VERSION: FORMAT_VERSION}
    )


def ints_from_arrow(table: pa.Table, *, kind: bytes = b"paillier.unpacked_slots") -> list[int]:
    """Inverse of :func:`ints_to_arrow`."""
    meta = table.schema.metadata or {}
    if meta.get(KIND) != kind or "value" not in table.column_names:
        raise IntegrityError(f"expected a {kind.decode()} message with a 'value' column")
    col = table.column("value")
    if not pa.types.is_fixed_size_binary(col.type):
        raise IntegrityError(f"slot column has type {col.type}, expected fixed_size_binary")
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        raise IntegrityError("slot column contains nulls")
    width = col.type.byte_width
    if len(arr) == 0:
        return []
    data = memoryview(arr.buffers()[1])[arr.offset * width : (arr.offset + len(arr)) * width]
    return [int.from_bytes(data[i * width : (i + 1) * width], "big") for i in range(len(arr))]


__all__ = [
    "ciphertext_table",
    "ciphertexts_to_array",
    "ints_from_arrow",
    "ints_to_arrow",
    "short_fingerprint",
    "table_ciphertexts",
]
