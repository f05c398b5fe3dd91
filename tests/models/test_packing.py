"""Multi-class packing: exact against numpy ``Q^T E`` on integers, and end to end under Paillier."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl.crypto import decrypt, decrypt_packed, encrypt, prepare_matrix
from vfl.crypto.packing import PackedCiphertexts
from vfl.errors import CryptoError, IntegrityError
from vfl.models.packing import (
    SlotLayout,
    column_sums,
    decrypt_outputs,
    encrypt_packed,
    packed_rdot,
    x_bound_of,
)


def _int_reference(layout: SlotLayout, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    e = np.asarray(layout.encode(d), dtype=object)
    return q.astype(object).T @ e


def _plain_product(layout: SlotLayout, q: np.ndarray, d: np.ndarray) -> list[list[int]]:
    """``sum_i q_ij P_i`` in plain integers: what the encrypted multi-exponentiation decrypts to."""
    groups = layout.pack_groups(d)
    return [[sum(int(q[i, j]) * p for i, p in enumerate(g)) for j in range(q.shape[1])] for g in groups]


def test_layout_arithmetic() -> None:
    lay = SlotLayout.for_problem(4, n_rows=30_000, x_bound=2**15 - 1, residual_bound=8.0, key_bits=2048)
    assert lay.residual_offset == 8 * 2**32
    assert lay.slot_bound == 30_000 * (2**15 - 1) * 2 * lay.residual_offset
    assert lay.slot_bits == (2 * lay.slot_bound).bit_length() + 40 + 1
    assert lay.slots_per_plaintext == 4 and lay.n_plaintexts == 1
    wide = SlotLayout.for_problem(40, 30_000, 2**15 - 1, 8.0, 1024)
    assert wide.slots_per_plaintext == 1023 // wide.slot_bits
    assert wide.n_plaintexts == -(-40 // wide.slots_per_plaintext)
    assert sum(len(wide.classes_in(g)) for g in range(wide.n_plaintexts)) == 40
    with pytest.raises(CryptoError, match="key holds"):
        SlotLayout.for_problem(2, 10**6, 2**19, 1e300, 1024, mask_bits=40, frac_bits=60)
    with pytest.raises(CryptoError, match="mask_bits"):
        SlotLayout.for_problem(2, 10, 100, 1.0, 1024, mask_bits=20)


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(1, 7),
    m=st.integers(1, 12),
    cols=st.integers(1, 4),
    xbits=st.sampled_from([12, 16, 20]),
    seed=st.integers(0, 2**32 - 1),
    key_bits=st.sampled_from([1024, 2048]),
)
def test_unpack_equals_numpy_integer_product(k, m, cols, xbits, seed, key_bits) -> None:
    rng = np.random.default_rng(seed)
    xb = 2 ** (xbits - 1) - 1
    q = rng.integers(-xb, xb + 1, size=(m, cols))
    q[0] = xb  # hit the bounds
    d = rng.uniform(-3.0, 3.0, size=(m, k))
    d[0, 0] = -3.0
    lay = SlotLayout.for_problem(k, m, xb, 3.0, key_bits)
    got = lay.unpack(_plain_product(lay, q, d), q.sum(axis=0).tolist())
    assert (got == _int_reference(lay, q, d)).all()


def test_residual_beyond_bound_is_refused() -> None:
    lay = SlotLayout.for_problem(3, 4, 100, 1.0, 1024)
    with pytest.raises(CryptoError, match="residual_bound"):
        lay.pack(np.array([[0.0, 1.5, 0.0]]))
    with pytest.raises(CryptoError, match="shape"):
        lay.pack(np.zeros((2, 2)))


def test_several_plaintexts_per_row_when_k_does_not_fit() -> None:
    rng = np.random.default_rng(5)
    lay = SlotLayout.for_problem(16, 50, 2**15 - 1, 4.0, 1024, frac_bits=40)
    assert lay.n_plaintexts >= 2
    q = rng.integers(-(2**15) + 1, 2**15, size=(50, 3))
    d = rng.uniform(-4, 4, size=(50, 16))
    got = lay.unpack(_plain_product(lay, q, d), q.sum(axis=0).tolist())
    assert (got == _int_reference(lay, q, d)).all()
    np.testing.assert_allclose(lay.gradient(got, rows=50), q.T @ d / 50, rtol=1e-9, atol=1e-9)


def test_encrypted_end_to_end_with_rdot_and_masks(keypair) -> None:
    pk, sk = keypair
    rng = np.random.default_rng(11)
    m, cols, k = 24, 3, 4
    x = rng.normal(size=(m, cols))
    x[:, 0] = 1.0  # an intercept column (no offset in the multi-exponentiation)
    prepared = prepare_matrix(x, bits=16)
    q = prepared.quantized.astype(np.int64)
    d = rng.uniform(-2, 2, size=(m, k))
    lay = SlotLayout.for_problem(k, m, x_bound_of(prepared), 2.0, pk.bits)
    expected = _int_reference(lay, q, d)
    sums = column_sums(prepared)

    encrypted = [encrypt_packed(pk, g) for g in lay.pack_groups(d)]
    # 1. no alignment squarings: decrypt and unpack directly
    outputs = [packed_rdot(v, prepared) for v in encrypted]
    assert (lay.unpack(decrypt_outputs(sk, outputs), sums) == expected).all()
    # 2. the engine's own rdot: divide out its squarings
    aligned = [v.rdot(prepared) for v in encrypted]
    got = lay.unpack(decrypt_outputs(sk, aligned), sums, squarings=prepared.squarings)
    assert (got == expected).all()
    # 3. masked for the arbiter, read with the existing decrypt_packed, unmasked by the party
    messages, state = lay.mask(outputs)
    wire = [PackedCiphertexts.from_arrow(msg.to_arrow(), pk) for msg in messages]
    slots = [decrypt_packed(sk, w) for w in wire]
    assert (state.unmask(slots, sums) == expected).all()
    grad = lay.gradient(state.unmask(slots, sums), prepared.shifts, rows=m)
    np.testing.assert_allclose(grad, prepared.dequantized.T @ d / m, rtol=0, atol=1e-9)
    # masked slots carry no plaintext structure: different masks for the same values
    again, _ = lay.mask(outputs)
    assert [decrypt_packed(sk, a) for a in again] != slots


def test_tampered_slots_are_rejected(keypair) -> None:
    pk, sk = keypair
    lay = SlotLayout.for_problem(2, 3, 100, 1.0, pk.bits)
    q = np.array([[1, 2], [3, -4], [5, 6]])
    prepared = prepare_matrix(q.astype(float), bits=8)
    enc = encrypt_packed(pk, lay.pack(np.full((3, 2), 0.5)))
    msgs, state = lay.mask([packed_rdot(enc, prepared)])
    slots = [decrypt_packed(sk, msgs[0])]
    slots[0][1] = (1 << lay.slot_bits) + 1
    with pytest.raises(IntegrityError):
        state.unmask(slots, column_sums(prepared))


def test_poisson_guest_residual_under_encryption(keypair) -> None:
    from vfl.models.poisson import guest_residual

    pk, sk = keypair
    rng = np.random.default_rng(9)
    u_h, u_g = rng.normal(size=20), rng.normal(size=20) * 2
    exposure = rng.uniform(0.5, 3.0, 20)
    y = rng.poisson(2.0, 20)
    enc = encrypt(pk, np.exp(u_h))  # host -> guest
    d = guest_residual(enc, u_g, y, exposure)
    expected = exposure * np.exp(u_g + u_h) - y
    np.testing.assert_allclose(decrypt(sk, d), expected, rtol=0, atol=1e-8 * np.max(np.abs(expected)))
    assert d.exponent == enc.exponent - 10


@pytest.mark.parametrize(
    "key_bits, k, groups, per",
    [(1024, 4, 1, 4), (1024, 5, 2, 3), (1024, 16, 4, 4), (2048, 9, 1, 9), (2048, 16, 2, 8)],
)
def test_classes_beyond_one_ciphertext_split_evenly(key_bits, k, groups, per):
    """ceil(K / floor((t + 1) / 2)) ciphertexts per row (the loss of c classes needs 2c - 1 slots)."""
    from vfl.options import TrainOptions
    from vfl.protocols.lr_multiclass import slot_layout

    layout = slot_layout(TrainOptions(batch_size=512), 2000, k, key_bits)
    assert (layout.groups, layout.per, layout.layout.k_classes) == (groups, per, groups * per)
    assert (2 * per - 1) * layout.layout.slot_bits <= key_bits - 1
    padded = layout.pad(np.ones((3, k)))
    assert padded.shape == (3, groups * per) and not padded[:, k:].any()


def test_poisson_chain_of_three_hosts_under_encryption(keypair) -> None:
    """Host 1 encrypts exp(u_1), hosts 2 and 3 raise it to exp(u_k), the guest to exp(u_g): exp(z) - y."""
    from vfl.models.poisson import guest_residual, times_exp

    pk, sk = keypair
    rng = np.random.default_rng(10)
    u = rng.normal(size=(4, 20))  # guest, host 1, 2, 3
    y = rng.poisson(2.0, 20)
    running = encrypt(pk, np.exp(u[1]))
    for k in (2, 3):
        running = times_exp(running, u[k]).rerandomize()
    d = guest_residual(running, u[0], y)
    expected = np.exp(u.sum(axis=0)) - y
    np.testing.assert_allclose(decrypt(sk, d), expected, rtol=0, atol=1e-8 * np.max(np.abs(expected)))
    assert d.exponent == -8 - 3 * 10
    with pytest.raises(CryptoError, match="too large"):
        times_exp(running, np.full(20, 16.0))  # exp(16) 16^10 needs more than 62 bits
