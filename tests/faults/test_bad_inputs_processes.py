"""User mistakes that need real ``vfl`` processes (the rest of the table is ``test_bad_inputs.py``).

A port in use for ``vfl run``, and guest, host and arbiter running job files that differ in one option:
each fails with exit code 2 and one ``error: ...`` line, and leaves the federation's files as they were.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from tests.faults.helpers import Fed, make_federation, snapshot, vfl_process
from vfl.config import JobConfig


@pytest.fixture
def fed(tmp_path) -> Fed:
    return make_federation(tmp_path / "fed")


def test_vfl_run_port_in_use_is_one_line_in_a_real_process(fed):
    host, port = fed.party("guest").listen.rsplit(":", 1)
    before = snapshot(fed.base)
    with socket.socket() as sock:
        sock.bind((host, int(port)))
        sock.listen()
        proc = vfl_process("run", str(fed.job), "--party", str(fed.ws["guest"]), "--quiet")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert err.strip().splitlines() == [
        f"error: party 'guest' cannot listen on {host}:{port} (Address already in use); the port is in use "
        "or the address is not on this machine — choose another listen address"
    ]
    assert snapshot(fed.base) == before


def test_parties_with_different_job_options_refuse_to_start(fed):
    """Guest and arbiter run job.toml; the host's copy has another learning rate: nobody trains."""
    host_job = fed.base / "host-job.toml"
    config = JobConfig.load(fed.job)
    host_job.write_text(
        JobConfig(config.id, config.kind, train={**config.train, "learning_rate": 0.05}).to_toml()
    )
    before = snapshot(fed.base)
    procs = {
        name: vfl_process("run", str(host_job if name == "host" else fed.job), "--party", str(fed.ws[name]), "--quiet")
        for name in ("guest", "host", "arbiter")
    }  # fmt: skip
    results = {}
    try:
        for name, proc in procs.items():
            results[name] = proc.communicate(timeout=120)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, proc in procs.items():
        out, err = results[name]
        assert proc.returncode == 2, (name, out, err)
        assert "Traceback" not in out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        # Names the setting that differs (the wording depends on which party compares first).
        assert re.search(r"differ.*learning_rate", lines[0]), (name, lines[0])
    after = snapshot(fed.base)
    new_or_changed = sorted(k for k in after if after[k] != before.get(k))
    # Each party keeps the ledger of the refused job (what crossed: the agreement), marked failed;
    # nothing else is written.
    results = [k for k in new_or_changed if not after[k][0] and "/state/" not in k]
    assert results and all(k.endswith("ledger.json") for k in results), results
    for k in results:
        ledger = json.loads((fed.base / k).read_text())
        assert ledger["status"] == "failed" and ledger["protocols"] == ["session"], ledger
    assert all(k in after for k in before), "a job that refused to start removed files"
