"""Usage errors (unknown option or command, missing or invalid argument) are one line on stderr, exit 2."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vfl.cli import app

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

CASES = [
    (["run", "--bogus"], "No such option: --bogus", "vfl run --help"),
    (["run"], "Missing argument 'JOB'", "vfl run --help"),
    (["--bogus"], "No such option: --bogus", "vfl --help"),
    (["nosuch"], "No such command 'nosuch'", "vfl --help"),
    (["federation", "add"], "Missing argument 'CARD'", "vfl federation add --help"),
    (["federation", "nosuch"], "No such command 'nosuch'", "vfl federation --help"),
    (["federation", "show", "--bogus"], "No such option: --bogus", "vfl federation show --help"),
    (["init", "x", "--role", "nope"], "Invalid value for '--role'", "vfl init --help"),
    (["init", "x", "--role"], "requires an argument", "vfl init --help"),
    (["federation", "add", "c.toml", "--file"], "requires an argument", "vfl federation add --help"),
    (["--debug", "init", "x", "--role"], "requires an argument", "vfl init --help"),
    (["demo", "--key-bits", "many"], "Invalid value for '--key-bits'", "vfl demo --help"),
]


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """``--debug`` adds a stderr handler to the root logger; leave no trace for the next tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def one_line(err: str, message: str, see: str) -> None:
    lines = ANSI.sub("", err).strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert message in lines[0], (message, lines[0])
    assert lines[0].endswith(f"(see '{see}')"), lines[0]
    assert "Traceback" not in err and "╭" not in err and "Usage:" not in err


@pytest.mark.parametrize(("args", "message", "see"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_usage_error_is_one_line_in_process(args: list[str], message: str, see: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    one_line(result.stderr, message, see)


def _vfl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "vfl.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_usage_error_is_one_line_in_a_real_process() -> None:
    proc = _vfl("run", "--bogus")
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    one_line(proc.stderr, "No such option: --bogus", "vfl run --help")


def test_help_is_unchanged() -> None:
    for args in (["--help"], ["run", "--help"], ["federation", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.stderr
        out = ANSI.sub("", result.stdout)
        assert "Usage:" in out and "error:" not in out
        assert result.stderr == ""


def test_a_bare_group_still_shows_its_help() -> None:
    result = CliRunner().invoke(app, ["federation"])
    assert "Usage:" in ANSI.sub("", result.stdout + result.stderr)
    assert "error:" not in result.stderr


def test_vfl_errors_keep_their_policy(tmp_path: Path) -> None:
    """A VflError from inside a command is still one line (no '--help' hint: it is not a usage error)."""
    result = CliRunner().invoke(app, ["run", str(tmp_path / "missing.toml"), "--party", str(tmp_path)])
    assert result.exit_code != 0
    lines = ANSI.sub("", result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" not in lines[0], result.stderr
