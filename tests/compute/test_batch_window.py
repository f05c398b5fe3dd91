"""A mini-batch's ``X^T [[d]]`` uses the bucket window that suits its rows, not the whole matrix's.

The window only changes how the exponents are cut into digits, so the product is the same to the bit.
"""

from __future__ import annotations

import numpy as np

from vfl.crypto import _kernels, decrypt, encrypt, generate_keypair, prepare_matrix
from vfl.crypto.multiexp import choose_window, rdot_ciphertexts, window_digits


def test_a_batch_gets_its_own_window_and_the_same_product():
    pk, sk = generate_keypair(1024)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 3))
    x[:, 2] = np.abs(x[:, 2])  # a column without negative entries: no offset
    prepared = prepare_matrix(x, window=16)  # as chosen for a matrix of ~160,000 rows
    rows = rng.choice(3000, size=64, replace=False)
    digits, q, window = prepared.batch_digits(rows)
    assert window == choose_window(16, 64) < 16
    assert np.array_equal(q, prepared.quantized[rows])
    old_digits, _ = prepared.select(rows)
    d = encrypt(pk, rng.normal(size=64))
    cts = list(d.ciphertexts)
    n2 = pk.n_square
    assert _kernels.bucket_multiexp(cts, digits, window, n2) == _kernels.bucket_multiexp(
        cts, old_digits, 16, n2
    )
    out, shift, _ = rdot_ciphertexts(cts, pk, prepared, rows)
    got = decrypt(sk, d._like(out, d.exponent - shift, None))
    assert np.allclose(got, prepared.dequantized[rows].T @ decrypt(sk, d), atol=1e-9)


def test_whole_matrix_and_hinted_batches_keep_the_prepared_digits():
    x = np.random.default_rng(5).normal(size=(600, 2))
    prepared = prepare_matrix(x, rows_hint=64)
    digits, _, window = prepared.batch_digits(None)
    assert digits is prepared.digits and window == prepared.window
    assert prepared.batch_digits(np.arange(64))[2] == prepared.window


def test_window_digits_recompose_the_exponents():
    e = np.random.default_rng(6).integers(0, 1 << 16, size=(50, 4))
    for w in (3, 6, 8, 16):
        digits = window_digits(e, 16, w)
        back = sum(digits[:, t, :].astype(np.int64) << (w * t) for t in range(digits.shape[1]))
        assert np.array_equal(back.T, e)
