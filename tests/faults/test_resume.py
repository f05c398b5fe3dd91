"""Kill each role mid-training (SIGKILL), restart it, and get the same model as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import vfl
from tests.faults.helpers import saved_epoch, start_party
from vfl import datasets
from vfl.cli.demo import setup_demo
from vfl.config import JobConfig
from vfl.model import ModelShard

OPTIONS = {"key_bits": 1024, "max_epochs": 6, "batch_size": 128, "tol": 0.0}
JOB = "resume-test"


def reference_weights(**extra: str) -> dict[str, np.ndarray]:
    """The weights of an uninterrupted simulated run with ``OPTIONS`` (and ``extra``), by party."""
    guest = pd.read_csv(datasets.path("breast_hetero_guest.csv"))
    host = pd.read_csv(datasets.path("breast_hetero_host.csv"))
    result = vfl.simulate(guest, [host], id="id", label="y", **extra, **OPTIONS)
    return {"guest": result.shards["guest"].weight_vector, "host": result.shards["host1"].weight_vector}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return reference_weights()


def kill_and_resume(
    tmp_path: Path, workspaces: dict[str, Path], victim: str, reference: dict[str, np.ndarray]
) -> dict:
    """Train ``OPTIONS`` as processes, SIGKILL ``victim`` after its epoch-2 state is saved, restart it,
    check every party's model against ``reference``; returns the victim's ledger."""
    job = tmp_path / "job.toml"
    job.write_text(JobConfig(id=JOB, kind="train", train=OPTIONS).to_toml())
    procs = {p: start_party(ws, job, tmp_path / f"{p}.log") for p, ws in workspaces.items()}
    deadline = time.monotonic() + 120
    while saved_epoch(workspaces[victim], JOB) < 2:
        assert time.monotonic() < deadline, "training did not reach epoch 2"
        assert procs[victim].poll() is None, (tmp_path / f"{victim}.log").read_text()
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    assert not (workspaces[victim] / "out" / JOB / "model.json").exists()
    procs[victim] = start_party(workspaces[victim], job, tmp_path / f"{victim}.log")
    for party, proc in procs.items():
        assert proc.wait(timeout=240) == 0, (tmp_path / f"{party}.log").read_text()
    for party in ("guest", "host"):
        shard = ModelShard.load(workspaces[party] / "out" / JOB / "model.json")
        np.testing.assert_allclose(shard.weight_vector, reference[party], rtol=1e-9, atol=1e-12)
    return json.loads((workspaces[victim] / "out" / JOB / "ledger.json").read_text())


@pytest.mark.parametrize("victim", ["host", "guest", "arbiter"])
def test_killed_party_resumes_to_the_same_model(tmp_path, reference, victim):
    workspaces, _ = setup_demo(tmp_path, key_bits=1024, max_epochs=None)
    ledger = kill_and_resume(tmp_path, workspaces, victim, reference)
    assert any("resynchronized" in note for note in ledger["notes"])
    # The restarted party's ledger covers both of its processes: the first one's agreement and PSI too.
    names = [m["message"] for m in ledger["messages"]]
    assert names.count("session.agree") >= 2 if victim != "arbiter" else "session.agree" in names
    if victim != "arbiter":
        assert "psi.hello" in names or "psi.hello-ack" in names
    assert not (workspaces[victim] / "out" / JOB / "state").exists(), (
        "state is removed once the job completes"
    )
