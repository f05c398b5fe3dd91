"""Shared fixtures: one 1024-bit key pair per session (tests only; production keys are 2048+ bits)."""

from __future__ import annotations

import pytest

from vfl.crypto import PrivateKey, PublicKey, generate_keypair


@pytest.fixture(scope="session")
def host_keys() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024)
