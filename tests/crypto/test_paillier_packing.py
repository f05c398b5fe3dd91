"""Mask, pack, decrypt once, unpack, unmask: exact round trips and refusal of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vfl.crypto import (
    EncryptedVector,
    MaskState,
    PackedCiphertexts,
    decrypt,
    decrypt_int,
    decrypt_packed,
    encrypt,
    ints_from_arrow,
    ints_to_arrow,
    mask_and_pack,
    prepare_matrix,
)
from vfl.crypto.packing import slot_bits_for, slots_per_ciphertext
from vfl.errors import CryptoError, IntegrityError

SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(g=st.integers(0, 40).flatmap(lambda n: arrays(np.float64, n, elements=st.floats(-1e4, 1e4))))
def test_mask_pack_unmask_round_trip_is_exact(pk, sk, g):
    enc = encrypt(pk, g)
    expected = decrypt_int(sk, enc)
    packed, state = mask_and_pack(enc)
    per = slots_per_ciphertext(pk, packed.slot_bits)
    assert len(packed.ciphertexts) == -(-len(g) // per)
    table = packed.to_arrow()
    received = PackedCiphertexts.from_arrow(table, pk)
    slots = decrypt_packed(sk, received)
    assert len(slots) == len(g) and all(0 <= s < 2**packed.slot_bits for s in slots)
    reply = ints_from_arrow(ints_to_arrow(slots))
    assert state.unmask_int(reply) == expected
    np.testing.assert_array_equal(state.unmask(reply), decrypt(sk, enc))


def test_the_arbiter_sees_only_masked_values(pk, sk):
    g = np.array([0.0, 0.0, 1.0, -1.0])
    enc = encrypt(pk, g)
    first = decrypt_packed(sk, mask_and_pack(enc)[0])
    second = decrypt_packed(sk, mask_and_pack(enc)[0])
    assert first != second  # fresh masks per message
    assert first[0] != first[1]  # equal gradients look different
    encoded_bound = enc.bound
    assert all(s >= 2**40 for s in first)  # masks are >= 40 bits wider than the bound
    assert all(s > 2 * encoded_bound for s in first)


def test_mask_width_and_layout(pk):
    assert slot_bits_for(1000, 40) == (2000).bit_length() + 41
    enc = encrypt(pk, np.arange(30.0))
    packed, state = mask_and_pack(enc, bound=100.0, mask_bits=48)
    assert packed.slot_bits == slot_bits_for(state.bound, 48)
    assert packed.slots_per_ciphertext * packed.slot_bits <= pk.bits - 1
    with pytest.raises(CryptoError, match="at least 40"):
        mask_and_pack(enc, mask_bits=20)
    unknown = enc.__class__(pk, enc.ciphertexts, enc.exponent, None)
    with pytest.raises(CryptoError, match="value bound is unknown"):
        mask_and_pack(unknown)
    with pytest.raises(CryptoError, match="more than a 1024-bit key holds"):
        mask_and_pack(enc, encoded_bound=2**1000)


def test_rdot_gradient_flow(pk, sk):
    """The LR step 3-5 flow: rdot output (bound derived from scales and rows) -> pack -> unmask."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 30))
    d = rng.uniform(-1, 1, size=300)
    grad = encrypt(pk, d).with_value_bound(1.0).rdot(x)
    packed, state = mask_and_pack(grad)
    assert len(packed.ciphertexts) <= 5
    out = state.unmask(decrypt_packed(sk, packed))
    np.testing.assert_array_equal(out, decrypt(sk, grad))
    np.testing.assert_allclose(out, x.T @ d, atol=1e-2)
    # as in the protocol: [[d]] arrives without a bound; the party bounds |g| by rows * max|X| * max|d|
    prepared = prepare_matrix(x)
    received = EncryptedVector.from_arrow(encrypt(pk, d).to_arrow(), pk)
    grad2 = received.rdot(prepared, np.arange(300))
    assert grad2.bound is None
    packed2, state2 = mask_and_pack(grad2, bound=300 * prepared.max_abs * 1.0)
    np.testing.assert_array_equal(state2.unmask(decrypt_packed(sk, packed2)), decrypt(sk, grad2))


def test_unmask_rejects_altered_replies(pk, sk):
    enc = encrypt(pk, np.array([1.0, 2.0, 3.0]))
    packed, state = mask_and_pack(enc)
    slots = decrypt_packed(sk, packed)
    with pytest.raises(IntegrityError, match="expected 3 unmasked slots"):
        state.unmask(slots[:2])
    with pytest.raises(IntegrityError, match="outside its"):
        state.unmask([slots[0], slots[1], 2**state.slot_bits])
    with pytest.raises(IntegrityError, match="beyond the declared bound"):
        state.unmask([slots[0], slots[1], slots[2] + 2**60])
    assert isinstance(state, MaskState)


def test_packed_arrow_validation(pk, sk, other_keypair):
    packed, _ = mask_and_pack(encrypt(pk, np.array([1.0, 2.0])))
    table = packed.to_arrow()
    with pytest.raises(CryptoError, match="another job or arbiter"):
        PackedCiphertexts.from_arrow(table, other_keypair[0])
    meta = dict(table.schema.metadata)
    meta[b"vfl.paillier.count"] = b"500"
    with pytest.raises(IntegrityError, match="cannot hold 500 values"):
        PackedCiphertexts.from_arrow(table.replace_schema_metadata(meta), pk)
    meta[b"vfl.paillier.count"] = b"two"
    with pytest.raises(IntegrityError, match="not an integer"):
        PackedCiphertexts.from_arrow(table.replace_schema_metadata(meta), pk)
    with pytest.raises(IntegrityError, match="expected a paillier.packed message"):
        PackedCiphertexts.from_arrow(encrypt(pk, np.array([1.0])).to_arrow(), pk)
