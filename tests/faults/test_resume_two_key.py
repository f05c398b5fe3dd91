"""Arbiter-free training: kill the guest (the coordinator) or the host mid-training with SIGKILL,
restart it, and get the same model as an uninterrupted run (DESIGN.md §12, §15)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.faults.test_resume import JOB, kill_and_resume, reference_weights
from vfl.cli.demo import setup_demo


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return reference_weights(topology="arbiter-free")


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["host", "guest"])
def test_killed_party_resumes_to_the_same_arbiter_free_model(tmp_path, reference, victim):
    workspaces, _ = setup_demo(tmp_path, key_bits=1024, max_epochs=None, arbiter=False)
    # No arbiter in the federation: the job trains arbiter-free by default.
    ledger = kill_and_resume(tmp_path, workspaces, victim, reference)
    assert any("resynchronized" in note for note in ledger["notes"])
    assert "lr-two-key" in ledger["protocols"]
    assert not (workspaces[victim] / "out" / JOB / "state").exists(), (
        "state is removed once the job completes"
    )
