"""EncryptedVector arithmetic against float64 numpy, phe interoperability, overflow and freshness."""

from __future__ import annotations

import math

import numpy as np
import phe
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vfl.crypto import (
    DEFAULT_EXPONENT,
    EncryptedVector,
    concatenate,
    decrypt,
    decrypt_int,
    encrypt,
    exponent_for_bits,
)
from vfl.errors import CryptoError, EncodingOverflowError, VflError

UNIT = 2.0**-32  # one unit at the default exponent -8
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

magnitudes = st.one_of(
    st.just(0.0),
    st.floats(-1e-6, 1e-6),
    st.floats(-1.0, 1.0),
    st.floats(-1e6, 1e6),
    st.floats(-1e30, 1e30),
)
vectors = st.integers(0, 9).flatmap(lambda n: arrays(np.float64, n, elements=magnitudes))


def quantized(x: np.ndarray, exponent: int = DEFAULT_EXPONENT) -> np.ndarray:
    """What the engine encodes: x rounded to a multiple of 16**exponent."""
    return np.ldexp(np.rint(np.ldexp(x, -4 * exponent)), 4 * exponent)


def close(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=atol)


@SETTINGS
@given(x=vectors)
def test_encrypt_decrypt(pk, sk, x):
    enc = encrypt(pk, x)
    assert len(enc) == len(x) and enc.exponent == DEFAULT_EXPONENT
    out = decrypt(sk, enc)
    assert out.dtype == np.float64 and out.shape == x.shape
    close(out, x, atol=UNIT / 2)
    np.testing.assert_array_equal(out, quantized(x))  # exactly the fixed-point value


@SETTINGS
@given(data=st.data())
def test_add_sub_neg(pk, sk, data):
    n = data.draw(st.integers(0, 9))
    a = data.draw(arrays(np.float64, n, elements=magnitudes))
    b = data.draw(arrays(np.float64, n, elements=magnitudes))
    ea, eb = encrypt(pk, a), encrypt(pk, b, exponent=-4)
    qa, qb = quantized(a), quantized(b, -4)
    close(decrypt(sk, ea + eb), qa + qb, atol=0)
    close(decrypt(sk, ea - eb), qa - qb, atol=0)
    close(decrypt(sk, -ea), -qa, atol=0)
    close(decrypt(sk, ea + b), qa + quantized(b), atol=0)
    close(decrypt(sk, ea - b), qa - quantized(b), atol=0)
    close(decrypt(sk, b - ea), quantized(b) - qa, atol=0)
    assert (ea + eb).exponent == DEFAULT_EXPONENT


@SETTINGS
@given(
    x=vectors, k=st.one_of(st.integers(-1000, 1000), st.floats(-1e3, 1e3), st.sampled_from([0.25, -0.5, 0.0]))
)
def test_scalar_multiply(pk, sk, x, k):
    enc = encrypt(pk, x)
    out = decrypt(sk, enc * k)
    k_used = k if isinstance(k, int) else math.ldexp(round(math.ldexp(k, 32)), -32)
    close(out, quantized(x) * k_used, atol=0)
    close(decrypt(sk, k * enc), out, atol=0)


def test_dyadic_scalars_keep_coarse_exponents(pk, sk):
    enc = encrypt(pk, np.array([1.0, -3.0]))
    assert (enc * 0.25).exponent == DEFAULT_EXPONENT - 1
    assert (enc * 3).exponent == DEFAULT_EXPONENT
    np.testing.assert_array_equal(decrypt(sk, enc * 0.25), [0.25, -0.75])


@SETTINGS
@given(data=st.data())
def test_elementwise_multiply_sum_dot(pk, sk, data):
    n = data.draw(st.integers(0, 9))
    x = data.draw(arrays(np.float64, n, elements=st.floats(-1e3, 1e3)))
    w = data.draw(arrays(np.float64, n, elements=st.floats(-10, 10)))
    enc = encrypt(pk, x)
    qx = quantized(x)
    qw = quantized(w)  # multipliers are rounded at 16**-8 at worst
    close(decrypt(sk, enc * w), qx * qw, atol=0)
    total = enc.sum()
    assert len(total) == 1
    close(decrypt(sk, total), [qx.sum()], atol=n * 1e-9)
    close(decrypt(sk, enc.dot(w)), [np.dot(qx, qw)], atol=n * 1e-9)


@SETTINGS
@given(x=vectors.filter(lambda v: len(v) > 0), data=st.data())
def test_indexing_and_concatenation(pk, sk, x, data):
    enc = encrypt(pk, x)
    idx = data.draw(st.lists(st.integers(0, len(x) - 1), max_size=12))
    np.testing.assert_array_equal(decrypt(sk, enc[np.array(idx, dtype=int)]), quantized(x)[idx])
    np.testing.assert_array_equal(decrypt(sk, enc[1:]), quantized(x)[1:])
    np.testing.assert_array_equal(decrypt(sk, enc[-1]), quantized(x)[-1:])
    mask = x > 0
    np.testing.assert_array_equal(decrypt(sk, enc[mask]), quantized(x)[mask])
    other = encrypt(pk, x[::-1], exponent=-2)
    joined = concatenate([other, enc])
    assert joined.exponent == DEFAULT_EXPONENT and len(joined) == 2 * len(x)
    np.testing.assert_array_equal(decrypt(sk, joined), np.concatenate([quantized(x[::-1], -2), quantized(x)]))


def test_exponent_for_bits_and_custom_scale(pk, sk):
    assert exponent_for_bits(0) == 0 and exponent_for_bits(20) == -5 and exponent_for_bits(21) == -6
    enc = encrypt(pk, np.array([1 / 3]), exponent=exponent_for_bits(20))
    assert abs(decrypt(sk, enc)[0] - 1 / 3) <= 2.0**-21
    ints = encrypt(pk, np.array([-5, 7], dtype=np.int64), exponent=0)
    assert decrypt_int(sk, ints) == [-5, 7]


def test_two_encryptions_differ_and_rerandomize(pk, sk):
    x = np.array([0.5, 0.5, -7.0])
    a, b = encrypt(pk, x), encrypt(pk, x)
    assert all(ca != cb for ca, cb in zip(a.ciphertexts, b.ciphertexts, strict=True))
    assert a.ciphertexts[0] != a.ciphertexts[1]
    r = a.rerandomize()
    assert all(c1 != c2 for c1, c2 in zip(a.ciphertexts, r.ciphertexts, strict=True))
    np.testing.assert_array_equal(decrypt(sk, r), x)
    assert r.bound == a.bound


def test_phe_decrypts_engine_results(pk, sk):
    x = np.array([1.25, -3.5, 0.0, 1e-7, 123456.789])
    w = np.array([2.0, -0.5, 3.0, 1e3, -1.0])
    enc = encrypt(pk, x)
    results = {
        "encrypt": (enc, quantized(x)),
        "add": (enc + enc, 2 * quantized(x)),
        "plain": (enc - w, quantized(x) - w),
        "mul": (enc * w, quantized(x) * w),
        "sum": (enc.sum(), [quantized(x).sum()]),
        "rdot": (enc.rdot(np.ones((5, 1))), [quantized(x).sum()]),
    }
    for name, (vec, expected) in results.items():
        numbers = vec.to_phe()
        assert all(isinstance(v, phe.EncryptedNumber) for v in numbers), name
        close(np.array([sk.phe.decrypt(v) for v in numbers]), expected, atol=1e-9)


def test_engine_decrypts_phe(pk, sk):
    values = [0.0, -1.5, 2**40 + 0.125, -1e-5, 7]
    numbers = [pk.phe.encrypt(v) for v in values]  # phe picks a different exponent per value
    numbers.append(pk.phe.encrypt(3.5) + pk.phe.encrypt(-1))
    vec = EncryptedVector.from_phe(numbers, pk)
    assert vec.exponent == min(0, *(n.exponent for n in numbers))
    close(decrypt(sk, vec), [*values, 2.5], atol=1e-12)
    back = vec.to_phe()
    close(np.array([sk.phe.decrypt(v) for v in back]), [*values, 2.5], atol=1e-12)


def test_overflow_is_refused_before_encrypting(pk):
    limit = pk.max_int
    with pytest.raises(EncodingOverflowError, match="too large for a 1024-bit key") as err:
        encrypt(pk, np.array([1.0, 2.0**1000]))
    assert "position 1" in str(err.value) and "Nothing was encrypted" in str(err.value)
    assert isinstance(err.value, VflError)
    with pytest.raises(EncodingOverflowError, match="non-finite"):
        encrypt(pk, np.array([np.nan]))
    big = encrypt(pk, np.array([float(limit >> 40)]), exponent=0)
    with pytest.raises(EncodingOverflowError, match="could overflow"):
        big * (2**50)
    with pytest.raises(EncodingOverflowError, match="could overflow"):
        big.aligned(-12)


def test_wrong_key_operations_fail(pk, sk, other_keypair):
    other_pk, other_sk = other_keypair
    a, b = encrypt(pk, np.array([1.0])), encrypt(other_pk, np.array([1.0]))
    with pytest.raises(CryptoError, match=f"{pk.fingerprint[:16]}.*{other_pk.fingerprint[:16]}"):
        a + b
    with pytest.raises(CryptoError, match="another job or arbiter"):
        decrypt(other_sk, a)
    with pytest.raises(CryptoError, match="under key"):
        EncryptedVector.from_phe([other_pk.phe.encrypt(1)], pk)
    with pytest.raises(CryptoError, match="lengths 1 and 2"):
        a + encrypt(pk, np.array([1.0, 2.0]))
    with pytest.raises(CryptoError, match="cannot multiply two encrypted"):
        a * a


def test_length_zero(pk, sk):
    empty = encrypt(pk, np.array([]))
    assert len(empty) == 0
    assert decrypt(sk, empty).shape == (0,)
    assert decrypt(sk, empty + empty).shape == (0,)
    assert decrypt(sk, (empty * 3).rerandomize()).shape == (0,)
    np.testing.assert_array_equal(decrypt(sk, empty.sum()), [0.0])
    np.testing.assert_array_equal(decrypt(sk, empty.rdot(np.zeros((0, 3)))), [0.0, 0.0, 0.0])
