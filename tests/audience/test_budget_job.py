"""The privacy budget of audience jobs: reserved at agreement, committed on success, released on a clean
failure, refused beyond the cap (naming partner, spent and cap), and crash-safe (a killed job keeps its
reservation; running it again spends nothing more)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vfl
from tests.audience.conftest import audience_options
from vfl.analytics.budget import BudgetExceededError, PrivacyBudget
from vfl.errors import PeerAbortedError

ROOT = Path(__file__).resolve().parents[2]


def _run(market, keys, tmp_path, job_id, caps=None, **extra):
    return vfl.simulate_audience(
        market["retailer"], {"bank": market["bank"]}, id="id", guest_name="retailer", keypairs=keys, workers=1,
        job_id=job_id, budgets={"retailer": tmp_path / "retailer", "bank": tmp_path / "bank"}, caps=caps,
        **audience_options(**extra),
    )  # fmt: skip


def _entries(tmp_path, party):
    with PrivacyBudget(tmp_path / party / "budget.sqlite") as b:
        return [(e.job_id, e.partner, e.epsilon, e.state) for e in b.entries()]


def test_commit_on_success_and_refusal_beyond_the_cap(market, host_keypairs, tmp_path):
    caps = {"retailer": {"bank": {"epsilon": 1.5, "period": "30d"}}}
    _run(market, host_keypairs, tmp_path, "first", caps=caps, epsilon=1.0)
    assert _entries(tmp_path, "retailer") == [("first", "bank", 1.0, "committed")]
    assert _entries(tmp_path, "bank") == [("first", "retailer", 1.0, "committed")]
    with pytest.raises(BudgetExceededError, match=r"partner 'bank' exceeded: spent 1 of the cap 1.5 per 30d"):
        _run(market, host_keypairs, tmp_path, "second", caps=caps, epsilon=1.0)
    # the refusing party wrote nothing; the host, which had reserved, released on the clean failure
    assert _entries(tmp_path, "retailer") == [("first", "bank", 1.0, "committed")]
    assert ("second", "retailer", 1.0, "released") in _entries(tmp_path, "bank")
    # a smaller job still fits
    _run(market, host_keypairs, tmp_path, "third", caps=caps, epsilon=0.5)
    with PrivacyBudget(tmp_path / "retailer" / "budget.sqlite", caps["retailer"]) as b:
        assert b.spent("bank") == pytest.approx(1.5)


def test_the_default_cap_refuses_a_fourth_default_job(market, host_keypairs, tmp_path):
    for job in ("a", "b", "c"):
        _run(market, host_keypairs, tmp_path, job)  # epsilon 1 each, default cap 3 per 30 days
    with pytest.raises((BudgetExceededError, PeerAbortedError), match="cap 3"):
        _run(market, host_keypairs, tmp_path, "d")


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import vfl
    from vfl.analytics import crosstab
    from vfl.crypto import generate_keypair
    from vfl.datasets import marketing
    from tests.audience.conftest import audience_options

    def die(*args, **kwargs):  # the host dies while it decrypts: numbers are about to be released
        os.kill(os.getpid(), signal.SIGKILL)

    crosstab.respond = die
    d = marketing(1500, seed=11)
    vfl.simulate_audience(
        d["retailer"], {{"bank": d["bank"]}}, id="id", guest_name="retailer", workers=1, job_id="crash",
        keypairs={{"bank": generate_keypair(1024)}},
        budgets={{"retailer": {ws!r} + "/retailer", "bank": {ws!r} + "/bank"}}, **audience_options(),
    )
    """
)


def test_a_killed_job_keeps_its_reservation_and_a_rerun_does_not_spend_twice(market, host_keypairs, tmp_path):
    script = CRASH.format(root=str(ROOT), ws=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    # the record survived the kill: both reservations are still held (and count as spent)
    assert _entries(tmp_path, "retailer") == [("crash", "bank", 1.0, "reserved")]
    assert _entries(tmp_path, "bank") == [("crash", "retailer", 1.0, "reserved")]
    _run(market, host_keypairs, tmp_path, "crash")  # the same job again: the reservation is reused
    assert _entries(tmp_path, "retailer") == [("crash", "bank", 1.0, "committed")]
    with PrivacyBudget(tmp_path / "bank" / "budget.sqlite") as b:
        assert b.spent("retailer") == pytest.approx(1.0)
