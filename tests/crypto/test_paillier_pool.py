"""Process-pool paths give the same results as in-process ones, and pools shut down cleanly."""

from __future__ import annotations

import os
import time

import numpy as np

from vfl.crypto import (
    RandomnessPool,
    WorkerPool,
    decrypt,
    decrypt_packed,
    encrypt,
    mask_and_pack,
    prepare_matrix,
)


def test_parallel_paths_match(pk, sk, workers):
    rng = np.random.default_rng(5)
    x = rng.normal(size=40)
    enc = encrypt(pk, x, workers=workers)
    np.testing.assert_array_equal(decrypt(sk, enc, workers=workers), decrypt(sk, enc))
    np.testing.assert_array_equal(decrypt(sk, enc), np.ldexp(np.rint(np.ldexp(x, 32)), -32))
    again = enc.rerandomize(workers=workers)
    assert all(a != b for a, b in zip(enc.ciphertexts, again.ciphertexts, strict=True))
    np.testing.assert_array_equal(decrypt(sk, again), decrypt(sk, enc))
    matrix = rng.normal(size=(40, 3))
    prepared = prepare_matrix(matrix)
    serial = enc.rdot(prepared, rerandomize=False)
    for cols in (matrix, matrix[:, :1]):  # column split and row split
        p = prepare_matrix(cols)
        par = enc.rdot(p, workers=workers, rerandomize=False)
        assert list(par.ciphertexts) == list(enc.rdot(p, rerandomize=False).ciphertexts)
    np.testing.assert_allclose(decrypt(sk, serial), prepared.dequantized.T @ decrypt(sk, enc), atol=1e-9)
    long = encrypt(pk, rng.normal(size=25))
    packed, state = mask_and_pack(long, encoded_bound=2**40, workers=workers)
    np.testing.assert_array_equal(state.unmask(decrypt_packed(sk, packed)), decrypt(sk, long))


def test_randomness_pool_fills_in_background(pk, sk, workers):
    pool = RandomnessPool(pk, workers, chunk=8)
    pool.fill(20)
    assert pool.scheduled > 0
    pool.wait()
    assert pool.available == 20
    enc = encrypt(pk, np.array([1.0, -2.0, 3.0]), randomness=pool)
    assert pool.available == 17
    np.testing.assert_array_equal(decrypt(sk, enc), [1.0, -2.0, 3.0])
    taken = pool.take(30)  # more than ready: the shortfall is computed in-process
    assert len(taken) == 30 and len(set(taken)) == 30 and pool.available == 0
    assert pool.memory_bytes() == 0 and pool.peak_bytes > 0
    pool.close()


def test_in_process_pool_and_clean_shutdown(pk, sk):
    local = RandomnessPool(pk)
    local.fill(4)
    assert local.available == 4
    with WorkerPool(2, min_items=1) as pool:
        enc = encrypt(pk, np.arange(8.0), workers=pool)
        np.testing.assert_array_equal(decrypt(sk, enc), np.arange(8.0))
        started = list(pool.executor._processes)
        assert len(started) == 2
    assert pool._executor is None
    deadline = time.monotonic() + 10
    alive = started
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in started if _alive(pid)]
        time.sleep(0.05)
    assert not alive, f"worker processes {alive} still running after close()"
    single = WorkerPool(1)
    assert not single.should_split(10**6)
    single.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_warm_up_builds_tables_in_workers(pk, workers):
    workers.warm_up(pk)
    assert len(workers.executor._processes) == 2
