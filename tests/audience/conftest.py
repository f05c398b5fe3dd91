"""Shared fixtures of the audience tests: a small marketing audience and one 1024-bit key per host (tests only)."""

from __future__ import annotations

import pytest

from vfl.crypto import generate_keypair
from vfl.datasets import marketing


@pytest.fixture(scope="session")
def market():
    return marketing(1500, seed=11)


@pytest.fixture(scope="session")
def host_keypairs():
    return {"bank": generate_keypair(1024), "publisher": generate_keypair(1024)}


BOUNDS = {"spend": [0.0, 400.0], "balance": [0.0, 30000.0], "page_visits": [0.0, 40.0]}


def audience_options(hosts=("bank",), **extra):
    segments = {"retailer": ["age_band"], "bank": ["income_band"], "publisher": ["interest_segment"]}
    metrics = {"retailer": ["spend"], "bank": ["balance"], "publisher": ["page_visits"]}
    parties = ("retailer", *hosts)
    options = {
        "segments": {p: segments[p] for p in parties},
        "metrics": {p: metrics[p] for p in parties},
        "bounds": {m: BOUNDS[m] for p in parties for m in metrics[p]},
        "key_bits": 1024,
        "k": 2,
    }
    options.update(extra)
    return options
