"""X25519 scalar multiplication: commutativity, the process-pool path, malformed points."""

from __future__ import annotations

import numpy as np
import pytest

from vfl.errors import ProtocolError
from vfl.psi import POINT_DTYPE, ScalarMultiplier, SecretScalar, hash_ids


def points(n: int, salt: bytes = b"s" * 32) -> np.ndarray:
    return hash_ids([f"id-{i}" for i in range(n)], salt)


def test_scalar_multiplication_commutes():
    a, b = SecretScalar.generate(), SecretScalar.generate()
    p = points(50)
    with ScalarMultiplier(workers=1) as mul:
        ab = mul.multiply(a, mul.multiply(b, p))
        ba = mul.multiply(b, mul.multiply(a, p))
        assert ab.tobytes() == ba.tobytes()
        assert mul.multiply(a, p).tobytes() != mul.multiply(b, p).tobytes()
        assert len(set(ab.tobytes()[i : i + 32] for i in range(0, 50 * 32, 32))) == 50


def test_pool_path_matches_in_process_path():
    a = SecretScalar.generate()
    p = points(1000)
    salt = b"s" * 32
    ids = [f"id-{i}" for i in range(1000)]
    with ScalarMultiplier(workers=1) as local:
        expected = local.multiply(a, p)
    with ScalarMultiplier(workers=2, chunk_size=64, parallel_threshold=0) as pooled:
        got = pooled.multiply(a, p)
        chunks = list(pooled.iter_multiply(a, p))
        import pyarrow as pa

        hashed = pooled.hash_and_multiply(a, salt, pa.array(ids))
        assert pooled._executor is not None  # the pool really ran
    assert got.dtype == POINT_DTYPE
    assert got.tobytes() == expected.tobytes()
    assert len(chunks) > 10 and max(len(c) for c in chunks) <= 64
    assert b"".join(c.tobytes() for c in chunks) == expected.tobytes()
    assert hashed.tobytes() == expected.tobytes()


def test_low_order_point_is_a_protocol_error():
    bad = np.frombuffer(bytes(32) + b"\x01" + bytes(31), dtype=POINT_DTYPE)
    with ScalarMultiplier(workers=1) as mul, pytest.raises(ProtocolError, match="low-order"):
        mul.multiply(SecretScalar.generate(), bad)


def test_secret_scalar_is_fresh_and_hidden():
    a, b = SecretScalar.generate(), SecretScalar.generate()
    assert a.value != b.value and len(a.value) == 32
    assert a.value.hex() not in repr(a) and "hidden" in repr(a)


def test_points_must_be_s32():
    with ScalarMultiplier(workers=1) as mul, pytest.raises(TypeError, match="S32"):
        mul.multiply(SecretScalar.generate(), np.zeros(3, dtype=np.int64))
