"""The key owner's CRT fast path: same randomizers, interchangeable ciphertexts, randomizer streams."""

from __future__ import annotations

import gmpy2
import numpy as np
import pyarrow as pa
import pytest
from gmpy2 import mpz

from vfl.crypto import (
    EncryptedVector,
    RandomnessPool,
    _kernels,
    decrypt,
    decrypt_int,
    decrypt_packed,
    encrypt,
    mask_and_pack,
    randomizers,
    randomizers_from_arrow,
    randomizers_to_arrow,
)
from vfl.crypto.randomness import key_owner_args, key_owner_tables
from vfl.errors import CryptoError, IntegrityError


def _exponent(digits, window):
    return sum(int(d) << (window * i) for i, d in enumerate(digits))


def test_crt_randomizers_are_exactly_h_s_to_the_a(pk, sk):
    h_s, p, q, bits, window = key_owner_args(sk)
    tables = key_owner_tables(sk)
    digits = _kernels.window_digits(len(tables[0][0]), window, bits, 6)
    digits[0] = [0] * len(digits[0])  # a = 0
    digits[1] = [(1 << window) - 1] * (len(digits[1]) - 1) + [
        (1 << (bits - window * (len(digits[1]) - 1))) - 1
    ]
    got = _kernels.crt_from_digits(tables, p, q, digits)
    for ds, r in zip(digits, got, strict=True):
        a = _exponent(ds, window)
        assert a < 2**bits  # the DJN exponent size
        assert r == gmpy2.powmod(pk.h_s, a, pk.n_square)
    plains = [mpz(0), mpz(1), pk.n - 1, mpz(12345), mpz(2) ** 500, pk.n // 3]
    cts = _kernels.crt_from_digits(tables, p, q, digits, plains)
    for ds, m, c in zip(digits, plains, cts, strict=True):
        expected = _kernels.djn_combine(
            [m], [gmpy2.powmod(pk.h_s, _exponent(ds, window), pk.n_square)], pk.n, pk.n_square
        )
        assert c == expected[0]
    assert sk.decrypt_raw(cts) == plains


def test_key_owner_ciphertexts_decrypt_with_phe_and_ours(pk, sk):
    x = np.array([0.0, 1.5, -2.25, 1e6, -3e-5])
    enc = encrypt(sk, x)
    assert enc.public_key is sk.public_key and len(enc) == len(x)
    np.testing.assert_allclose(decrypt(sk, enc), x, atol=2.0**-32)
    np.testing.assert_allclose([sk.phe.decrypt(v) for v in enc.to_phe()], x, atol=2.0**-32)
    assert decrypt_int(sk, encrypt(sk, np.array([-5, 7], dtype=np.int64), exponent=0)) == [-5, 7]
    assert len(encrypt(sk, np.array([]))) == 0


def test_randomizers_are_fresh_nth_residues(pk, sk):
    for key in (pk, sk):
        rs = randomizers(key, 20)
        assert len(set(rs)) == 20
        assert all(1 < r < pk.n_square for r in rs)
        assert sk.decrypt_raw(rs) == [0] * 20  # an n-th residue is an encryption of 0
    assert randomizers(sk, 0) == []


def test_homomorphic_operations_mix_both_kinds(pk, sk):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=12), rng.normal(size=12)
    ea, eb = encrypt(pk, a), encrypt(sk, b)
    qa, qb = decrypt(sk, ea), decrypt(sk, eb)
    np.testing.assert_array_equal(decrypt(sk, ea + eb), qa + qb)
    np.testing.assert_array_equal(decrypt(sk, eb - ea), qb - qa)
    np.testing.assert_array_equal(decrypt(sk, eb * 4), qb * 4)
    np.testing.assert_array_equal(
        decrypt(sk, EncryptedVector.concatenate([ea, eb])), np.concatenate([qa, qb])
    )
    x = rng.normal(size=(12, 3))
    np.testing.assert_allclose(decrypt(sk, (ea + eb).rdot(x)), x.T @ (qa + qb), atol=1e-3)
    pool = RandomnessPool(sk)
    pool.fill(8)
    fresh = eb.rerandomize(randomness=pool)
    assert not set(fresh.ciphertexts.tolist()) & set(eb.ciphertexts.tolist())
    np.testing.assert_array_equal(decrypt(sk, fresh), qb)
    packed, state = mask_and_pack((ea + eb).with_value_bound(10.0), randomness=pool)
    np.testing.assert_array_equal(state.unmask(decrypt_packed(sk, packed)), qa + qb)
    with_pool = encrypt(pk, a, randomness=pool)  # a data party using key-owner randomizers
    np.testing.assert_array_equal(decrypt(sk, with_pool), qa)


def test_supplied_randomizers_are_used_once_then_the_pool_computes(pk, sk):
    supplied = randomizers(sk, 10)
    pool = RandomnessPool(pk)
    pool.add(randomizers_from_arrow(randomizers_to_arrow(supplied, pk), pk))
    assert pool.supplied == 10 and pool.available == 10
    taken = pool.take(4) + pool.take(4)
    assert taken == supplied[:8]
    mixed = pool.take(5)  # 2 supplied, then 3 computed by the pool itself
    assert mixed[:2] == supplied[8:] and pool.supplied == 0
    later = pool.take(6)
    everything = taken + mixed + later
    assert len(set(everything)) == len(everything) == 19
    assert sk.decrypt_raw(everything) == [0] * 19
    with pytest.raises(IntegrityError, match="outside"):
        pool.add([pk.n_square])
    pool.close()
    assert pool.supplied == 0


def test_randomizer_stream_arrow_round_trip(pk, sk):
    rs = randomizers(sk, 7)
    table = randomizers_to_arrow(rs, pk)
    assert table.schema.field("ciphertext").type == pa.binary(2 * pk.key_bytes)
    meta = table.schema.metadata
    assert meta[b"vfl.kind"] == b"paillier.randomizers"
    assert meta[b"vfl.paillier.key_fingerprint"] == pk.fingerprint.encode()
    assert randomizers_from_arrow(table, pk) == rs
    assert randomizers_from_arrow(randomizers_to_arrow([], pk), pk) == []


def test_wrong_key_or_malformed_stream_is_refused(pk, sk, other_keypair):
    other_pk, other_sk = other_keypair
    stream = randomizers_to_arrow(randomizers(other_sk, 3), other_pk)
    with pytest.raises(CryptoError, match=f"{other_pk.fingerprint[:16]}.*{pk.fingerprint[:16]}"):
        randomizers_from_arrow(stream, pk)
    with pytest.raises(IntegrityError, match="expected a paillier.randomizers message"):
        randomizers_from_arrow(encrypt(pk, np.array([1.0])).to_arrow(), pk)
    forged = randomizers_to_arrow([pk.n], pk)  # shares the factor n: not a unit
    with pytest.raises(IntegrityError, match="not invertible"):
        randomizers_from_arrow(forged, pk)
    with pytest.raises(CryptoError, match="randomness pool belongs to key"):
        encrypt(pk, np.array([1.0]), randomness=RandomnessPool(other_sk))


def test_key_owner_worker_paths(pk, sk, workers):
    x = np.random.default_rng(9).normal(size=30)
    enc = encrypt(sk, x, workers=workers)
    np.testing.assert_array_equal(decrypt(sk, enc), decrypt(sk, encrypt(pk, x)))
    workers.warm_up(sk)
    pool = RandomnessPool(sk, workers, chunk=8)
    assert pool.key_owner
    pool.fill(20)
    pool.wait()
    got = pool.take(20)
    assert len(set(got)) == 20 and sk.decrypt_raw(got) == [0] * 20
    split = randomizers(sk, 40, workers)
    assert len(set(split)) == 40 and sk.decrypt_raw(split) == [0] * 40
