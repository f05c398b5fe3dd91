"""End to end: three real processes over loopback mTLS (``vfl demo``), then predict, inspect and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import vfl
from tests.service.serving import vfl as vfl_cli
from vfl import datasets
from vfl.cli import app
from vfl.model import ModelShard

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3


def run_together(commands: list[list[str]], timeout: float = 300) -> None:
    """Start one ``vfl`` process per command at once; each must exit 0 (its output is the message)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vfl.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        for args in commands
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, output


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("demo")
    done = vfl_cli("demo", str(base), "--key-bits", "1024", "--epochs", str(EPOCHS), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "auc" in done.stdout and "report:" in done.stdout
    return base


def test_demo_trains_three_processes_and_writes_every_output(demo_dir):
    out = {p: demo_dir / p / "out" / "demo-breast" for p in ("guest", "host", "arbiter")}
    metrics = json.loads((out["guest"] / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS and metrics["intersection_size"] == 569
    assert metrics["metrics"]["auc"] > 0.95
    html = (out["guest"] / "report.html").read_text()
    assert "data:image/png;base64," in html and "Leakage ledger" in html
    for party in ("guest", "host"):
        shard = ModelShard.load(out[party] / "model.json")
        assert shard.party == party and len(shard.weights) == (11 if party == "guest" else 20)
    ledgers = {p: json.loads((out[p] / "ledger.json").read_text()) for p in out}
    assert ledgers["arbiter"]["totals"]["guest"]["received"]["messages"] >= EPOCHS
    assert not (out["arbiter"] / "model.json").exists()


def test_networked_model_equals_in_process_simulation(demo_dir, fate):
    guest = pd.read_csv(fate / "breast_hetero_guest.csv")
    host = pd.read_csv(fate / "breast_hetero_host.csv")
    sim = vfl.simulate(guest, [host], id="id", label="y", key_bits=1024, max_epochs=EPOCHS, batch_size=128)
    for party, name in (("guest", "guest"), ("host", "host1")):
        shard = ModelShard.load(demo_dir / party / "out" / "demo-breast" / "model.json")
        np.testing.assert_allclose(shard.weight_vector, sim.shards[name].weight_vector, rtol=1e-6, atol=1e-9)


def test_predict_scores_new_ids_like_training(demo_dir, tmp_path):
    guest_csv = tmp_path / "guest_new.csv"
    host_csv = tmp_path / "host_new.csv"
    g = pd.read_csv(datasets.path("breast_hetero_guest.csv")).iloc[:200].drop(columns=["y"])
    h = pd.read_csv(datasets.path("breast_hetero_host.csv")).iloc[100:300]
    g.to_csv(guest_csv, index=False)
    h.to_csv(host_csv, index=False)
    run_together(
        [
            [
                "predict",
                "--party",
                str(demo_dir / p),
                "--model",
                "demo-breast",
                "--data",
                str(data),
                "--quiet",
            ]
            for p, data in (("guest", guest_csv), ("host", host_csv))
        ]
    )
    scores = pd.read_csv(demo_dir / "guest" / "out" / "predict-demo-breast" / "scores.csv")
    assert sorted(scores["id"]) == sorted(set(g["id"]) & set(h["id"]))
    trained = pd.read_csv(demo_dir / "guest" / "out" / "demo-breast" / "scores.csv").set_index("id")
    np.testing.assert_allclose(scores.set_index("id")["score"], trained.loc[scores["id"], "score"], rtol=1e-6)


def test_inspect_and_report(demo_dir):
    runner = CliRunner()
    out = demo_dir / "guest" / "out" / "demo-breast"
    shown = runner.invoke(app, ["inspect", str(out / "model.json")])
    assert shown.exit_code == 0 and "(intercept)" in shown.stdout
    shown = runner.invoke(app, ["inspect", str(demo_dir / "host" / "out" / "demo-breast" / "ledger.json")])
    assert shown.exit_code == 0 and "never learns" in shown.stdout and "labels" in shown.stdout
    shown = runner.invoke(app, ["inspect", str(out / "metrics.json")])
    assert shown.exit_code == 0 and "auc" in shown.stdout
    target = demo_dir / "again.html"
    made = runner.invoke(
        app, ["report", "--party", str(demo_dir / "guest"), "--job", "demo-breast", "-o", str(target)]
    )
    assert made.exit_code == 0, made.stdout
    assert "ROC" in target.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nope.toml", "--party", "{demo}/guest"], "job file nope.toml does not exist"),
        (
            ["run", "{demo}/job.toml", "--party", "{demo}/missing"],
            "does not exist; create it with 'vfl init'",
        ),
        (["inspect", "{demo}/job.toml"], "not a vfl output file"),
        (["report", "--party", "{demo}/host", "--job", "demo-breast"], "only the guest has labels"),
        (["predict", "--party", "{demo}/guest", "--model", "nope"], "model shard"),
    ],
)
def test_user_mistakes_are_one_line_errors(demo_dir, args, message):
    done = vfl_cli(*[a.replace("{demo}", str(demo_dir)) for a in args], timeout=60)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_screen_job_over_mtls_processes(demo_dir):
    """`vfl run` of a screen job: the guest and the host as processes, the arbiter takes no part."""
    job = demo_dir / "screen.toml"
    job.write_text(
        '[job]\nid = "screen-breast"\nkind = "screen"\n[screen]\nkey_bits = 1024\nshare_iv = true\n'
    )
    run_together([["run", str(job), "--party", str(demo_dir / p), "--quiet"] for p in ("guest", "host")])
    out = demo_dir / "guest" / "out" / "screen-breast"
    iv = pd.read_csv(out / "iv.csv")
    assert len(iv) == 30 and set(iv["owner"]) == {"guest", "host"}
    assert "data:image/png;base64," in (out / "report.html").read_text()
    shared = pd.read_csv(demo_dir / "host" / "out" / "screen-breast" / "iv.csv")
    host_iv = iv[iv["owner"] == "host"].set_index("column")["iv"]
    np.testing.assert_allclose(shared.set_index("column")["iv"], host_iv.loc[shared["column"]])
    ledger = json.loads((demo_dir / "host" / "out" / "screen-breast" / "ledger.json").read_text())
    assert "labels" in ledger["never_learns"] and "screen" in ledger["protocols"]
