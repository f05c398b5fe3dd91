"""The guest's Dask scheduler dies mid-training: one line, and `vfl run` again resumes to the same model."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

import vfl
from tests.faults.helpers import free_port, saved_epoch, start_party
from vfl import datasets
from vfl.cli.demo import setup_demo
from vfl.config import JobConfig
from vfl.model import ModelShard

OPTIONS = {"key_bits": 1024, "max_epochs": 6, "batch_size": 128, "tol": 0.0}
JOB = "dask-resume"
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

pytestmark = pytest.mark.skipif(shutil.which("dask") is None, reason="the dask command line is not installed")


def _cluster(port: int) -> list[subprocess.Popen]:
    scheduler = subprocess.Popen(["dask", "scheduler", "--port", str(port), "--no-dashboard"], **QUIET)
    worker = subprocess.Popen(
        ["dask", "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--nworkers", "2", "--no-dashboard"],
        **QUIET,
    )
    return [worker, scheduler]


def _stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.mark.slow
def test_a_lost_scheduler_stops_the_job_and_a_rerun_resumes_to_the_same_model(tmp_path):
    guest = pd.read_csv(datasets.path("breast_hetero_guest.csv"))
    host = pd.read_csv(datasets.path("breast_hetero_host.csv"))
    reference = vfl.simulate(guest, [host], id="id", label="y", **OPTIONS)
    port = free_port()
    cluster = _cluster(port)
    try:
        workspaces, _ = setup_demo(tmp_path, key_bits=1024, max_epochs=None)
        party_file = workspaces["guest"] / "party.toml"
        party_file.write_text(party_file.read_text() + f'\n[compute]\nbackend = "dask://127.0.0.1:{port}"\n')
        job = tmp_path / "job.toml"
        job.write_text(JobConfig(id=JOB, kind="train", train=OPTIONS).to_toml())
        procs = {p: start_party(ws, job, tmp_path / f"{p}.log") for p, ws in workspaces.items()}
        deadline = time.monotonic() + 180
        while saved_epoch(workspaces["guest"], JOB) < 2:
            assert time.monotonic() < deadline, "training did not reach epoch 2"
            assert procs["guest"].poll() is None, (tmp_path / "guest.log").read_text()
            time.sleep(0.05)
        _stop(cluster[1:], signal.SIGKILL)  # the scheduler goes away mid-job
        assert procs["guest"].wait(timeout=120) != 0
        errors = [
            line for line in (tmp_path / "guest.log").read_text().splitlines() if line.startswith("error:")
        ]
        assert len(errors) == 1 and "lost the Dask scheduler" in errors[0], errors
        for party in ("host", "arbiter"):
            procs[party].wait(timeout=120)
        assert saved_epoch(workspaces["guest"], JOB) >= 2  # the checkpoints survive the failure
        _stop(cluster)
        cluster = _cluster(port)  # the scheduler is back
        procs = {p: start_party(ws, job, tmp_path / f"{p}.log") for p, ws in workspaces.items()}
        for party, proc in procs.items():
            assert proc.wait(timeout=300) == 0, (tmp_path / f"{party}.log").read_text()
    finally:
        _stop(cluster)
    for party, name in (("guest", "guest"), ("host", "host1")):
        shard = ModelShard.load(workspaces[party] / "out" / JOB / "model.json")
        np.testing.assert_allclose(
            shard.weight_vector, reference.shards[name].weight_vector, rtol=1e-9, atol=1e-12
        )
    ledger = json.loads((workspaces["guest"] / "out" / JOB / "ledger.json").read_text())
    tags = [m["tag"] for m in ledger["messages"]]
    # The ledger lists the first process's messages too (its PSI and epoch 0): the rerun resumed if
    # none of them came again.
    again = sorted({t for t in tags if ("psi" in t or "/e0/" in t) and tags.count(t) > 1})
    assert any("psi" in t for t in tags) and not again, f"the rerun ran PSI or epoch 0 again: {again[:5]}"
