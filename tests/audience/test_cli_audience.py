"""The audience job from workspaces: party.toml [budget], `vfl budget`, `vfl run` refusing bad input before
it writes anything, and (slow) the marketing demo as four processes over loopback mTLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vfl.cli import app
from vfl.cli.demo import setup_marketing
from vfl.config import JobConfig, PartyConfig
from vfl.errors import ConfigError
from vfl.parties.runner import run_party

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def workspaces(tmp_path):
    spaces, jobs = setup_marketing(tmp_path, key_bits=1024, max_epochs=1, rows=300)
    return spaces, jobs


def test_party_toml_budget_caps_and_vfl_budget(workspaces):
    spaces, _ = workspaces
    party = PartyConfig.load(spaces["retailer"])
    party.budget = {"bank": {"epsilon": 2.0, "period": "7d"}, "*": {"epsilon": 0.5, "period": "all"}}
    party.save()
    text = (spaces["retailer"] / "party.toml").read_text()
    assert "[budget]" in text and "default = " in text
    again = PartyConfig.load(spaces["retailer"])
    assert again.budget == party.budget
    result = CliRunner().invoke(app, ["budget", "--party", str(spaces["retailer"])])
    assert result.exit_code == 0, result.output
    assert "bank" in result.output and "7d" in result.output and "2" in result.output
    (spaces["retailer"] / "party.toml").write_text(text.replace('period = "7d"', 'period = "soon"'))
    bad = CliRunner().invoke(app, ["budget", "--party", str(spaces["retailer"])])
    assert bad.exit_code != 0 and "budget period must look like '30d'" in bad.output


def test_vfl_run_refuses_a_column_not_offered_before_writing_anything(workspaces):
    spaces, jobs = workspaces
    party = PartyConfig.load(spaces["retailer"])
    party.columns = ["age_band", "region"]  # spend is not offered
    party.save()
    config = JobConfig.load(jobs[0])
    with pytest.raises(ConfigError, match=r"column 'spend' of party 'retailer' is not offered to jobs"):
        run_party(spaces["retailer"], jobs[0])
    assert not (party.output_dir / config.id).exists()
    assert not (spaces["retailer"] / "budget.sqlite").exists()
    # and from the command line: one line, no traceback
    result = CliRunner().invoke(app, ["run", str(jobs[0]), "--party", str(spaces["retailer"])])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "not offered to jobs" in result.output


@pytest.mark.slow
def test_marketing_demo_runs_an_audience_job_and_a_training_job(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", "vfl.cli", "demo", str(tmp_path), "--scenario", "marketing", "--key-bits", "1024",
         "--epochs", "2", "--rows", "1500"],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "retailer" / "out" / "demo-audience"
    overlap = pd.read_csv(out / "overlap.csv")
    assert overlap["between"].tolist() == ["retailer ∩ bank", "retailer ∩ publisher", "all parties"]
    table = pd.read_parquet(out / "crosstab_bank.parquet")
    assert {"age_band", "income_band", "count", "sum_spend", "sum_balance", "suppressed"} <= set(
        table.columns
    )
    assert table.loc[table["suppressed"], "count"].isna().all()
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["released"] and {"kind", "epsilon", "seen_by"} <= set(ledger["released"][0])
    host_table = pd.read_csv(tmp_path / "bank" / "out" / "demo-audience" / "crosstab_retailer.csv")
    assert len(host_table) == len(table)
    assert (tmp_path / "retailer" / "out" / "demo-marketing" / "metrics.json").exists()
    budget = CliRunner().invoke(app, ["budget", "--party", str(tmp_path / "bank")])
    assert "retailer" in budget.output and "1" in budget.output
