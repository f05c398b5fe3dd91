"""Service and job log files: rotation, per-job files, tails, and no global logging state."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from vfl.errors import ConfigError
from vfl.service import logs


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> logging.Logger:
    log = logging.getLogger(f"vfl.test.{request.node.name}")
    log.propagate = False
    yield log
    # Every test removes what it added (pytest's own capture handlers aside: pytest >= 9.2 attaches them
    # to loggers that do not propagate).
    assert [h for h in log.handlers if not type(h).__module__.startswith("_pytest")] == []


def test_the_service_log_rotates_by_size(tmp_path: Path, logger: logging.Logger) -> None:
    root_handlers = list(logging.getLogger().handlers)
    handlers = logs.add_service_log(logger, tmp_path, max_bytes=2000, backups=3)
    for i in range(500):
        logger.info("message number %04d with some padding to fill the file", i)
    logs.remove_handlers(logger, handlers)
    folder = tmp_path / "logs"
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert names == ["vfl.log", "vfl.log.1", "vfl.log.2", "vfl.log.3"]
    assert all((folder / n).stat().st_size <= 2000 for n in names)
    last = logs.tail(folder / "vfl.log", 1)[0]
    assert last.endswith(
        "INFO vfl.test.test_the_service_log_rotates_by_size: message number 0499 with some padding to fill the file"
    )
    assert last[:20].endswith("Z") and last[10] == "T"  # UTC ISO time
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert logging.getLogger().handlers == root_handlers  # nothing global was touched


def test_levels_and_bad_settings(tmp_path: Path, logger: logging.Logger) -> None:
    handlers = logs.add_service_log(logger, tmp_path, level=logging.WARNING)
    logger.info("hidden")
    logger.warning("shown")
    logs.remove_handlers(logger, handlers)
    assert [line.split(" ", 1)[1] for line in logs.tail(logs.service_log_path(tmp_path))] == [
        "WARNING vfl.test.test_levels_and_bad_settings: shown"
    ]
    with pytest.raises(ConfigError, match="max_bytes must be > 0"):
        logs.add_service_log(logger, tmp_path, max_bytes=0)


def test_a_job_log_is_its_own_file_and_appends_on_resume(tmp_path: Path, logger: logging.Logger) -> None:
    service = logs.add_service_log(logger, tmp_path)
    with logs.job_log(logger, tmp_path, "campaign-1") as path:
        assert path == tmp_path / "logs" / "jobs" / "campaign-1.log"
        logger.info("epoch 1")
    logger.info("between jobs")
    with logs.job_log(logger, tmp_path, "campaign-1"):
        logger.info("epoch 2 (resumed)")
    with logs.job_log(logger, tmp_path, "other"):
        logger.info("other job")
    logs.remove_handlers(logger, service)
    job = [line.split(": ", 1)[1] for line in logs.job_log_tail(tmp_path, "campaign-1")]
    assert job == ["epoch 1", "epoch 2 (resumed)"]
    assert [line.split(": ", 1)[1] for line in logs.job_log_tail(tmp_path, "other")] == ["other job"]
    service_lines = [line.split(": ", 1)[1] for line in logs.tail(logs.service_log_path(tmp_path))]
    assert service_lines == ["epoch 1", "between jobs", "epoch 2 (resumed)", "other job"]


def test_tail_reads_only_the_end_of_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(200_000)))
    assert logs.tail(path, 3) == ["line 199997", "line 199998", "line 199999"]
    assert logs.tail(path, 3, block=7) == ["line 199997", "line 199998", "line 199999"]
    assert logs.tail(path, 0) == []
    small = tmp_path / "small.log"
    small.write_text("a\nb")  # no final newline
    assert logs.tail(small, 10) == ["a", "b"]
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert logs.tail(empty, 5) == []
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"ok\n\xff\xfe broken\n")
    assert logs.tail(bad, 1) == ["\ufffd\ufffd broken"]


def test_missing_logs_and_unsafe_ids_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(logs.JobLogError, match=r"job 'nope' has no log \(.*nope.log does not exist\)"):
        logs.job_log_tail(tmp_path, "nope")
    with pytest.raises(logs.JobLogError, match="does not exist"):
        logs.tail(tmp_path / "missing.log")
    for bad in ("../escape", "a/b", "", ".."):
        with pytest.raises(logs.JobLogError, match="cannot name a log file"):
            logs.job_log_path(tmp_path, bad)
