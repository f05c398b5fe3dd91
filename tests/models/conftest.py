"""Fixtures for the model-math tests: a 1024-bit key pair (tests only) and the FATE splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vfl.crypto import PrivateKey, PublicKey, generate_keypair

ROOT = Path(__file__).resolve().parents[2]
FATE = ROOT.parent / "shared" / "data" / "fate"

# name -> (id column, label column)
DATASETS = {"student": ("id", "y"), "motor": ("idx", "motor_speed"), "dvisits": ("id", "doctorco")}


@pytest.fixture(scope="session")
def keypair() -> tuple[PublicKey, PrivateKey]:
    return generate_keypair(1024)


def fate_split(name: str, seed: int = 0, test_size: float = 0.2):
    """Guest/host blocks (standardized with training statistics, guest block led by the intercept),
    labels, for a fixed 80/20 split of the joined FATE data; skips if the data folder is missing."""
    id_col, label = DATASETS[name]
    guest_file, host_file = FATE / f"{name}_hetero_guest.csv", FATE / f"{name}_hetero_host.csv"
    if not guest_file.exists() or not host_file.exists():
        pytest.skip(f"FATE example data {name} not found in {FATE}; accuracy test skipped")
    guest, host = pd.read_csv(guest_file), pd.read_csv(host_file)
    joined = guest.merge(host, on=id_col, suffixes=("_g", "_h"))
    y = joined[label].to_numpy(dtype=float)
    g_cols = [c for c in guest.columns if c not in (id_col, label)]
    h_cols = [c for c in host.columns if c != id_col]
    g_cols = [c if c in joined else f"{c}_g" for c in g_cols]
    h_cols = [c if c in joined else f"{c}_h" for c in h_cols]
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_size * len(y)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])

    def block(cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = joined[cols].to_numpy(dtype=float)
        mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
        sd[sd == 0] = 1.0
        z = (x - mu) / sd
        return z[train], z[test]

    (g_tr, g_te), (h_tr, h_te) = block(g_cols), block(h_cols)
    g_tr = np.column_stack([np.ones(len(train)), g_tr])
    g_te = np.column_stack([np.ones(len(test)), g_te])
    return [g_tr, h_tr], [g_te, h_te], y[train], y[test]
