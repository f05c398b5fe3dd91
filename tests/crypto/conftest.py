"""Shared fixtures: 1024-bit key pairs generated once per session (tests only; production uses 2048+)."""

from __future__ import annotations

import multiprocessing

import pytest

from vfl.crypto import PrivateKey, PublicKey, WorkerPool, generate_keypair


@pytest.fixture(scope="session")
def keypair() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024)


@pytest.fixture(scope="session")
def pk(keypair: tuple[PublicKey, PrivateKey]) -> PublicKey:
    return keypair[0]


@pytest.fixture(scope="session")
def sk(keypair: tuple[PublicKey, PrivateKey]) -> PrivateKey:
    return keypair[1]


@pytest.fixture(scope="session")
def other_keypair() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024)


@pytest.fixture(scope="session")
def workers():
    """A 2-process pool with tiny thresholds so small test vectors exercise the parallel paths."""
    pool = WorkerPool(2, min_items=4)
    yield pool
    pool.close()
    assert pool._executor is None
    for child in multiprocessing.active_children():
        child.join(timeout=5)
