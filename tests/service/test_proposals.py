"""The proposal checks of a party service that need no service: row bounds and caps per period."""

from __future__ import annotations

import pytest

from vfl.config import JobConfig
from vfl.errors import ConfigError
from vfl.parties.service_proposals import PERIOD_SECONDS, check_cap, row_bound
from vfl.service.policy import Cap
from vfl.service.store import JobRecord

NOW = 1_000_000_000.0


def record(
    job: str, proposer: str = "bank", state: str = "completed", rows: int | None = 100, age: float = 60.0
):
    return JobRecord(job, "psi", state, proposer, created=NOW - age, rows=rows)


def test_the_bound_is_the_smaller_set_and_ours_when_nothing_is_declared() -> None:
    assert row_bound(500, 40) == 40
    assert row_bound(30, 40) == 30
    assert row_bound(500, 0) == 500
    assert row_bound(None, 40) is None  # the arbiter has no rows


def test_rows_cap_counts_used_and_bound_rows_of_this_period_and_partner_only() -> None:
    cap = Cap("bank", "day", rows=250)
    config = JobConfig(id="new", kind="psi")
    past = [
        record("a", rows=100),  # completed: its intersection
        record("b", state="running", rows=100),  # running: its bound
        record("c", state="refused", rows=100),  # refused: never ran
        record("d", proposer="shop", rows=100),  # another partner
        record("e", rows=100, age=PERIOD_SECONDS["day"] + 1),  # yesterday
    ]
    assert check_cap(cap, past, config, 50, NOW) is None  # 200 + 50 <= 250
    rule, line = check_cap(cap, past, config, 51, NOW)
    assert rule == "[caps.bank] rows"
    assert line == (
        "refused by policy rule [caps.bank] rows: this job may use up to 51 rows, 'bank' has used 200 "
        "of 250 this day; propose fewer ids or wait"
    )
    assert check_cap(cap, past, config, None, NOW) is None  # a party without rows has nothing to cap


def test_jobs_and_epsilon_caps() -> None:
    past = [record("a"), record("b")]
    rule, _ = check_cap(Cap("bank", "week", jobs=2), past, JobConfig(id="n", kind="psi"), 1, NOW)
    assert rule == "[caps.bank] jobs"
    noisy = JobConfig(id="n", kind="audience", sections={"audience": {"epsilon": 0.5}})
    assert check_cap(Cap("bank", "week", epsilon=0.5), past, noisy, 1, NOW) is None
    rule, line = check_cap(Cap("bank", "week", epsilon=0.4), past, noisy, 1, NOW)
    assert rule == "[caps.bank] epsilon" and "spends epsilon 0.5" in line


def test_the_accepted_rows_bound_travels_to_the_jobs_worker(tmp_path):
    """What the service accepted a job for is what the worker's run checks after the PSI."""
    from vfl.parties.common import RowLimit
    from vfl.parties.service_jobs import JobFiles

    files = JobFiles.of(tmp_path, "job-1")
    files.directory.mkdir(parents=True)
    assert files.row_limit() is None  # no cap applied: nothing to check
    files.write_row_limit(RowLimit("retailer", 1200))
    assert files.row_limit() == RowLimit("retailer", 1200)
    files.limit_file.write_text("{not json")
    with pytest.raises(ConfigError, match="rows cap .* is unreadable"):
        files.row_limit()
