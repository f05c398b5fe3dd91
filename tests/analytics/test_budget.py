"""The privacy budget ledger: caps, idempotence, a real SIGKILL mid-job, and two processes racing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vfl.analytics.budget import BudgetExceededError, PrivacyBudget, parse_period
from vfl.errors import ConfigError, VflError

ROOT = Path(__file__).resolve().parents[2]
CAPS = {"bank": {"epsilon": 3.0, "period": "30d"}}
DAY = 86400.0


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_reserve_commit_release_and_the_cap(tmp_path: Path) -> None:
    with PrivacyBudget(tmp_path / "budget.sqlite", CAPS) as b:
        b.reserve("job-1", "bank", 1.0)
        b.reserve("job-2", "bank", 1.5)
        assert b.spent("bank") == pytest.approx(2.5)
        with pytest.raises(BudgetExceededError) as err:
            b.reserve("job-3", "bank", 1.0)
        msg = str(err.value)
        assert "'bank'" in msg and "spent 2.5" in msg and "cap 3" in msg and "per 30d" in msg
        assert isinstance(err.value, VflError)
        assert b.commit("job-1") == 1
        assert b.commit("job-1") == 0  # idempotent
        assert b.release("job-2") == 1
        assert b.release("job-1") == 0  # a committed spend is never given back
        assert b.spent("bank") == pytest.approx(1.0)
        b.reserve("job-3", "bank", 2.0)  # fits again after the release
        with pytest.raises(ConfigError, match="no privacy budget reservation"):
            b.commit("job-404")
        states = {(e.job_id, e.state) for e in b.entries()}
        assert states == {("job-1", "committed"), ("job-2", "released"), ("job-3", "reserved")}
        (row,) = b.summary()
        assert row == {
            "partner": "bank",
            "spent": 3.0,
            "reserved": 2.0,
            "cap": 3.0,
            "period": "30d",
            "remaining": 0.0,
        }


def test_reserve_is_idempotent_on_the_job_id(tmp_path: Path) -> None:
    with PrivacyBudget(tmp_path / "b.sqlite", CAPS) as b:
        first = b.reserve("job-1", "bank", 2.0)
        again = b.reserve("job-1", "bank", 2.0)
        assert again == first and b.spent("bank") == pytest.approx(2.0)
        with pytest.raises(ConfigError, match="already holds epsilon 2"):
            b.reserve("job-1", "bank", 1.0)
        b.commit("job-1")
        assert b.reserve("job-1", "bank", 2.0).state == "committed"
        assert b.spent("bank") == pytest.approx(2.0)


def test_period_is_a_rolling_window_and_partners_are_separate(tmp_path: Path) -> None:
    now = 1_000_000_000.0
    caps = {**CAPS, "*": {"epsilon": 1.0, "period": "all"}}
    with PrivacyBudget(tmp_path / "b.sqlite", caps) as b:
        b.reserve("old", "bank", 3.0, now=now - 31 * DAY)
        b.reserve("new", "bank", 3.0, now=now)  # the old spend left the 30-day window
        assert b.spent("bank", now=now) == 3.0 and b.spent("bank", "all", now=now) == 6.0
        b.reserve("p1", "publisher", 1.0, now=now - 1000 * DAY)
        with pytest.raises(BudgetExceededError, match="'publisher'.*spent 1 of the cap 1 in total"):
            b.reserve("p2", "publisher", 0.5, now=now)
    assert parse_period("12h") == 43200 and parse_period("2w") == 14 * DAY and parse_period("all") is None
    with pytest.raises(ConfigError, match="period"):
        parse_period("monthly")
    with pytest.raises(ConfigError, match="budget cap for 'bank'"):
        PrivacyBudget(tmp_path / "c.sqlite", {"bank": {"eps": 1}})


def test_ledger_is_wal_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    PrivacyBudget(path).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_sigkill_between_reserve_and_commit_keeps_the_reservation(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    child = _python(
        """
        import sys, time
        from vfl.analytics.budget import PrivacyBudget
        b = PrivacyBudget(sys.argv[1], {"bank": {"epsilon": 3.0, "period": "30d"}})
        b.reserve("job-crash", "bank", 2.0)
        print("reserved", flush=True)
        time.sleep(60)  # "running the job" -- killed here
        b.commit("job-crash")
        """,
        str(path),
    )
    try:
        assert child.stdout.readline().strip() == "reserved", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with PrivacyBudget(path, CAPS) as b:
        (entry,) = b.entries()
        assert (entry.job_id, entry.partner, entry.epsilon, entry.state) == (
            "job-crash",
            "bank",
            2.0,
            "reserved",
        )
        assert b.spent("bank") == 2.0  # not lost
        b.reserve("job-crash", "bank", 2.0)  # the re-run finds it: no double spend
        assert b.spent("bank") == 2.0
        with pytest.raises(BudgetExceededError):
            b.reserve("job-other", "bank", 1.5)
        b.commit("job-crash")
        assert [e.state for e in b.entries()] == ["committed"]


def test_two_processes_race_for_one_cap(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    PrivacyBudget(path, CAPS).close()
    go = tmp_path / "go"
    code = """
        import os, sys, time
        from vfl.analytics.budget import BudgetExceededError, PrivacyBudget
        b = PrivacyBudget(sys.argv[1], {"bank": {"epsilon": 3.0, "period": "30d"}})
        print("ready", flush=True)
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.001)
        try:
            b.reserve(sys.argv[3], "bank", 2.0)
            print("granted", flush=True)
        except BudgetExceededError as exc:
            print("refused", exc, flush=True)
        """
    kids = [_python(code, str(path), str(go), f"job-{i}") for i in range(2)]
    try:
        for k in kids:
            assert k.stdout.readline().strip() == "ready", k.stderr.read()
        go.touch()
        outcomes = sorted(k.communicate(timeout=30)[0].split()[0] for k in kids)
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
                k.wait()
    assert outcomes == ["granted", "refused"]
    with PrivacyBudget(path, CAPS) as b:
        assert b.spent("bank") == 2.0 and len(b.entries()) == 1


def test_summary_lists_configured_partners_without_spend(tmp_path: Path) -> None:
    with PrivacyBudget(tmp_path / "b.sqlite", {**CAPS, "publisher": {"epsilon": 2}}) as b:
        rows = {r["partner"]: r for r in b.summary(now=time.time())}
        assert rows["publisher"]["remaining"] == 2.0 and rows["publisher"]["period"] == "30d"
        assert rows["bank"]["spent"] == 0.0
