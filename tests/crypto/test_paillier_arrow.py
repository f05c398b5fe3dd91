"""Arrow wire format of encrypted vectors: round trip, wrong key, malformed input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vfl.crypto import EncryptedVector, decrypt, encrypt
from vfl.errors import CryptoError, IntegrityError, VflError


def test_round_trip(pk, sk):
    x = np.array([1.5, -2.0, 0.0, 1e9])
    enc = encrypt(pk, x, exponent=-3)
    table = enc.to_arrow()
    assert table.schema.field("ciphertext").type == pa.binary(2 * pk.key_bytes)
    meta = table.schema.metadata
    assert meta[b"vfl.paillier.key_fingerprint"] == pk.fingerprint.encode()
    assert meta[b"vfl.paillier.exponent"] == b"-3"
    back = EncryptedVector.from_arrow(table, pk)
    assert back.exponent == -3 and list(back.ciphertexts) == list(enc.ciphertexts) and back.bound is None
    np.testing.assert_array_equal(decrypt(sk, back), x)
    assert EncryptedVector.from_arrow(table, pk, value_bound=2e9).bound is not None
    # chunked and sliced arrays are read correctly too
    sliced = pa.Table.from_batches(table.slice(1, 3).to_batches() + table.slice(0, 1).to_batches())
    np.testing.assert_array_equal(decrypt(sk, EncryptedVector.from_arrow(sliced, pk)), [-2.0, 0.0, 1e9, 1.5])
    empty = EncryptedVector.from_arrow(encrypt(pk, np.array([])).to_arrow(), pk)
    assert len(empty) == 0


def test_vector_under_another_key_names_both_fingerprints(pk, other_keypair):
    other_pk = other_keypair[0]
    table = encrypt(other_pk, np.array([1.0])).to_arrow()
    with pytest.raises(CryptoError) as err:
        EncryptedVector.from_arrow(table, pk)
    message = str(err.value)
    assert other_pk.fingerprint[:16] in message and pk.fingerprint[:16] in message


def _with(table: pa.Table, column: pa.Array) -> pa.Table:
    return pa.Table.from_arrays([column], names=["ciphertext"]).replace_schema_metadata(table.schema.metadata)


def test_malformed_tables_are_rejected(pk):
    enc = encrypt(pk, np.array([1.0, 2.0]))
    table = enc.to_arrow()
    width = 2 * pk.key_bytes
    cases = []
    cases.append((table.replace_schema_metadata({}), "no vfl schema metadata"))
    meta = dict(table.schema.metadata)
    del meta[b"vfl.paillier.exponent"]
    cases.append((table.replace_schema_metadata(meta), "lacks vfl.paillier.exponent"))
    meta = dict(table.schema.metadata)
    meta[b"vfl.paillier.exponent"] = b"3"
    cases.append((table.replace_schema_metadata(meta), "positive"))
    meta = dict(table.schema.metadata)
    del meta[b"vfl.paillier.key_fingerprint"]
    cases.append((table.replace_schema_metadata(meta), "lacks the key fingerprint"))
    cases.append(
        (_with(table, pa.array([b"x" * width, b"y" * width], type=pa.binary())), "expected fixed_size_binary")
    )
    short = pa.array([b"\x01" * (width - 1)] * 2, type=pa.binary(width - 1))
    cases.append((_with(table, short), f"expected fixed_size_binary\\[{width}\\]"))
    too_big = (int(pk.n_square) + 5).to_bytes(width, "big")
    cases.append(
        (_with(table, pa.array([too_big, too_big], type=pa.binary(width))), "position 0 is not below n")
    )
    zero = bytes(width)
    ok = enc.ciphertexts[0].to_bytes(width, "big")
    cases.append((_with(table, pa.array([ok, zero], type=pa.binary(width))), "position 1 is not invertible"))
    shares_p = int(pk.n).to_bytes(width, "big")  # n itself: not coprime to n
    cases.append(
        (_with(table, pa.array([shares_p, ok], type=pa.binary(width))), "position 0 is not invertible")
    )
    cases.append((_with(table, pa.array([ok, None], type=pa.binary(width))), "nulls"))
    renamed = table.rename_columns(["c"]).replace_schema_metadata(table.schema.metadata)
    cases.append((renamed, "no 'ciphertext' column"))
    for bad, message in cases:
        with pytest.raises((IntegrityError, CryptoError), match=message) as err:
            EncryptedVector.from_arrow(bad, pk)
        assert isinstance(err.value, VflError)
    with pytest.raises(IntegrityError, match="expected a pyarrow Table"):
        EncryptedVector.from_arrow(b"not a table", pk)  # type: ignore[arg-type]
