"""X^T [[d]] by bucket multi-exponentiation against float64 numpy, within the stated quantization error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vfl.crypto import PreparedMatrix, decrypt, decrypt_int, encrypt, prepare_matrix
from vfl.crypto.multiexp import choose_window
from vfl.errors import CryptoError

SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
entries = st.one_of(st.just(0.0), st.floats(-1.0, 1.0), st.floats(-1e4, 1e4), st.floats(-1e-5, 1e-5))


def expected_and_tolerance(prepared: PreparedMatrix, d_used: np.ndarray, rows=None):
    """Exact product with the dequantized matrix, and the documented bound against the float matrix."""
    xq = prepared.dequantized if rows is None else prepared.dequantized[rows]
    return xq.T @ d_used, prepared.output_error(float(np.abs(d_used).sum()))


@SETTINGS
@given(
    shape=st.tuples(st.integers(0, 13), st.integers(1, 4)),
    bits=st.sampled_from([12, 16, 20]),
    data=st.data(),
)
def test_rdot_matches_numpy(pk, sk, shape, bits, data):
    m, k = shape
    x = data.draw(arrays(np.float64, shape, elements=entries))
    d = data.draw(arrays(np.float64, m, elements=st.floats(-10, 10)))
    enc = encrypt(pk, d)
    d_used = decrypt(sk, enc)  # d as encoded (16**-8 grid)
    prepared = prepare_matrix(x, bits=bits)
    out = enc.rdot(prepared)
    assert len(out) == k and out.exponent <= enc.exponent
    result = decrypt(sk, out)
    exact, tol = expected_and_tolerance(prepared, d_used)
    np.testing.assert_allclose(result, exact, rtol=1e-9, atol=1e-9)  # the engine computes exactly this
    assert np.all(np.abs(result - x.T @ d_used) <= tol * (1 + 1e-9) + 1e-9)  # documented error vs float X
    assert np.all(np.abs(prepared.dequantized - x) <= prepared.entry_error[None, :])


def test_rdot_on_row_subsets_reuses_prepared_digits(pk, sk):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 5))
    x[:, 0] = 1.0  # intercept: non-negative column, no offset needed
    x[:, 1] = np.abs(x[:, 1])
    prepared = prepare_matrix(x, bits=16)
    assert not prepared.offsets[0] and not prepared.offsets[1] and prepared.offsets[2:].all()
    d = rng.normal(size=200)
    for batch in (np.arange(0, 50), rng.permutation(200)[:37], slice(150, 200)):
        rows = np.arange(200)[batch]
        enc = encrypt(pk, d[rows])
        out = decrypt(sk, enc.rdot(prepared, batch))
        d_used = d[rows]
        np.testing.assert_allclose(out, prepared.dequantized[rows].T @ d_used, rtol=1e-9, atol=1e-7)
        np.testing.assert_allclose(out, x[rows].T @ d_used, atol=1e-3)
    with pytest.raises(CryptoError, match="has 50 elements but the selected matrix rows are 37"):
        encrypt(pk, d[:50]).rdot(prepared, np.arange(37))


def test_rdot_result_is_rerandomized(pk, sk):
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    enc = encrypt(pk, np.array([0.25, -1.0]))
    a = enc.rdot(x, rerandomize=False)
    b = enc.rdot(x, rerandomize=False)
    c = enc.rdot(x)
    assert list(a.ciphertexts) == list(b.ciphertexts)  # deterministic without a fresh randomizer
    assert all(ca != cc for ca, cc in zip(a.ciphertexts, c.ciphertexts, strict=True))
    np.testing.assert_allclose(decrypt(sk, c), x.T @ [0.25, -1.0], atol=1e-9)


def test_rdot_tracks_the_gradient_bound(pk, sk):
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, size=(64, 3))
    d = rng.uniform(-0.5, 0.5, size=64)
    enc = encrypt(pk, d)
    out = enc.rdot(x)
    ints = decrypt_int(sk, out)
    assert out.bound is not None and max(abs(v) for v in ints) <= out.bound
    # bound = max_j sum_i |q_ij| 2^(4F - s_j) * max|enc(d)|: not absurdly loose for this data
    assert out.bound.bit_length() <= max(abs(v) for v in ints).bit_length() + 8


def test_window_choice_and_validation():
    assert choose_window(16, 10_000) == 8
    assert choose_window(12, 100) in (4, 6)
    with pytest.raises(CryptoError, match="quantization bits"):
        prepare_matrix(np.ones((2, 2)), bits=32)
    with pytest.raises(CryptoError, match="NaN or infinite"):
        prepare_matrix(np.array([[np.nan]]))
    p = prepare_matrix(np.ones((10, 2)))
    with pytest.raises(CryptoError, match="out of range"):
        p.select(np.array([10]))
