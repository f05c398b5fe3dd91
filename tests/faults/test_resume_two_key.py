"""Arbiter-free training: kill the guest (the coordinator) or the host mid-training with SIGKILL,
restart it, and get the same model as an uninterrupted run (DESIGN.md §12, §15)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pandas as pd
import pytest

import vfl
from tests.faults.test_resume import JOB, _saved_epoch, _start
from vfl import datasets
from vfl.cli.demo import setup_demo
from vfl.config import JobConfig
from vfl.model import ModelShard

OPTIONS = {"key_bits": 1024, "max_epochs": 6, "batch_size": 128, "tol": 0.0}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    guest = pd.read_csv(datasets.path("breast_hetero_guest.csv"))
    host = pd.read_csv(datasets.path("breast_hetero_host.csv"))
    result = vfl.simulate(guest, [host], id="id", label="y", topology="arbiter-free", **OPTIONS)
    return {"guest": result.shards["guest"].weight_vector, "host": result.shards["host1"].weight_vector}


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["host", "guest"])
def test_killed_party_resumes_to_the_same_arbiter_free_model(tmp_path, reference, victim):
    workspaces, _ = setup_demo(tmp_path, key_bits=1024, max_epochs=None, arbiter=False)
    job = tmp_path / "job.toml"
    # No arbiter in the federation: the job trains arbiter-free by default.
    job.write_text(JobConfig(id=JOB, kind="train", train=OPTIONS).to_toml())
    procs = {p: _start(ws, job, tmp_path / f"{p}.log") for p, ws in workspaces.items()}
    deadline = time.monotonic() + 120
    while _saved_epoch(workspaces[victim]) < 2:
        assert time.monotonic() < deadline, "training did not reach epoch 2"
        assert procs[victim].poll() is None, (tmp_path / f"{victim}.log").read_text()
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    assert not (workspaces[victim] / "out" / JOB / "model.json").exists()
    procs[victim] = _start(workspaces[victim], job, tmp_path / f"{victim}.log")
    for party, proc in procs.items():
        assert proc.wait(timeout=240) == 0, (tmp_path / f"{party}.log").read_text()
    for party in ("guest", "host"):
        shard = ModelShard.load(workspaces[party] / "out" / JOB / "model.json")
        np.testing.assert_allclose(shard.weight_vector, reference[party], rtol=1e-9, atol=1e-12)
    import json

    ledger = json.loads((workspaces[victim] / "out" / JOB / "ledger.json").read_text())
    assert any("resynchronized" in note for note in ledger["notes"])
    assert "lr-two-key" in ledger["protocols"]
    assert not (workspaces[victim] / "out" / JOB / "state").exists(), (
        "state is removed once the job completes"
    )
