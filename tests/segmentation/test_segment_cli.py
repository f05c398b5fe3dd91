"""End to end: a segment job between two real processes over loopback mTLS (``vfl run``), then
``vfl predict`` with the segment model; outputs, ledgers and the host's policy from its party.toml."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vfl import datasets
from vfl.analytics.dp import noise_variance
from vfl.cli.demo import free_port
from vfl.cli.workspace import DataSpec, create_workspace
from vfl.config import Federation, JobConfig
from vfl.segmentation.model import SegmentModel

ROOT = Path(__file__).resolve().parents[2]


def _run_all(commands: dict[str, list[str]]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}
    procs = {
        p: subprocess.Popen(
            [sys.executable, "-m", "vfl.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )  # fmt: skip
        for p, args in commands.items()
    }
    out = {}
    for p, proc in procs.items():
        out[p], _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{p}: {out[p]}"
    return out


@pytest.mark.slow
def test_segment_job_and_assignment_between_two_processes(tmp_path):
    data = {
        "guest": DataSpec(datasets.path("breast_hetero_guest.csv"), "id", "y", None),
        "host": DataSpec(datasets.path("breast_hetero_host.csv"), "id", None, [f"x{i}" for i in range(6)]),
    }
    federation = Federation()
    workspaces = {}
    for party, role in (("guest", "guest"), ("host", "host")):
        ws = tmp_path / party
        _, card, _ = create_workspace(ws, party_id=party, role=role, listen=f"127.0.0.1:{free_port()}",
                                      data=data[party], force=True)  # fmt: skip
        federation.add(card)
        workspaces[party] = ws
    for ws in workspaces.values():
        federation.save(ws / "federation.toml")
    with (workspaces["host"] / "party.toml").open("a") as f:
        f.write("\n[segment]\nrelease_membership = true\nshare_means = true\n")
    job = tmp_path / "job.toml"
    section = {"k": 3, "key_bits": 1024, "outcome": "y", "membership": "guest", "min_size": 40}
    job.write_text(JobConfig(id="seg", kind="segment", sections={"segment": section}).to_toml())
    _run_all({p: ["run", str(job), "--party", str(ws), "--quiet"] for p, ws in workspaces.items()})

    g = workspaces["guest"] / "out" / "seg"
    profiles = pd.read_csv(g / "segment_profiles.csv")
    assert len(profiles) == 3
    assert {"rate", "rate_low", "rate_high", "guest:x0", "host:x0"} <= set(profiles.columns)
    assert profiles["rate"].max() - profiles["rate"].min() > 0.3  # segments differ in outcome
    segments = pd.read_csv(g / "segments.csv")
    assert len(segments) == 569 and set(segments["segment"]) == {0, 1, 2}
    assert "data:image/png;base64" in (g / "segment_report.html").read_text()
    host_ledger = json.loads((workspaces["host"] / "out" / "seg" / "ledger.json").read_text())
    assert host_ledger["status"] == "completed" and "the outcome" in host_ledger["never_learns"]
    # the release is the lookup of the saved models' own local clusters, row by row
    frames = {p: pd.read_csv(datasets.path(f"breast_hetero_{p}.csv")).set_index("id") for p in workspaces}
    models = {p: SegmentModel.load(ws / "out" / "seg" / "segment_model.json") for p, ws in workspaces.items()}
    ids = segments["id"].to_numpy()
    direct = models["guest"].lookup[models["guest"].local_clusters(frames["guest"].loc[ids]),
                                    models["host"].local_clusters(frames["host"].loc[ids])]  # fmt: skip
    assert (segments["segment"].to_numpy() == direct).all()
    # Noised sizes: each cell of a segment carries two discrete-Laplace shares at the count's epsilon
    # (1 split over count and outcome), so their sum is within 5 standard deviations of the 569 rows.
    cells = int((models["guest"].lookup >= 0).sum())
    assert abs(profiles["size"].sum() - 569) < 5 * math.sqrt(cells * 2 * noise_variance(0.5))

    # vfl predict on 469 of the customers (the host lacks 100), in other orders: every one's segment again
    new = {"guest": tmp_path / "guest_new.csv", "host": tmp_path / "host_new.csv"}
    frames["guest"].drop(columns=["y"]).sample(frac=1.0, random_state=3).to_csv(new["guest"])
    frames["host"].iloc[100:].iloc[::-1].to_csv(new["host"])
    _run_all({
        p: ["predict", "--party", str(ws), "--model", "seg", "--data", str(new[p]), "--quiet"]
        for p, ws in workspaces.items()
    })  # fmt: skip
    assigned = pd.read_csv(workspaces["guest"] / "out" / "predict-seg" / "segments.csv")
    assert len(assigned) == 469
    known = segments.set_index("id")["segment"]
    assert (assigned["segment"].to_numpy() == known.loc[assigned["id"]].to_numpy()).all()
