"""Shared pieces of the service tests: a federation whose host and arbiter run ``vfl serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.helpers import ROOT, Fed, make_federation
from vfl.service.store import JobStore

AUTO = '[defaults]\napproval = "auto"\n'


def vfl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "vfl.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def cli(*args: object) -> subprocess.CompletedProcess:
    """``vfl ARGS`` in this process (the real command, without the cost of a new interpreter)."""
    import re

    from typer.testing import CliRunner

    from vfl.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    return subprocess.CompletedProcess(
        args, result.exit_code, ansi.sub("", result.stdout), ansi.sub("", result.stderr)
    )


def start_vfl(*args: str, log: Path) -> subprocess.Popen:
    """A ``vfl`` process in its own session (so a test can kill it with its workers, as a crash would)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR", "COLUMNS": "200"}
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vfl.cli", *args], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip


class Services:
    """``vfl serve`` for the host and the arbiter of ``fed``."""

    def __init__(self, fed: Fed, parties: tuple[str, ...] = ("host", "arbiter"), *extra: str) -> None:
        self.fed = fed
        self.extra = extra
        self.procs: dict[str, subprocess.Popen] = {}
        for p in parties:
            self.start(p)

    def log(self, party: str) -> Path:
        return self.fed.base / f"serve-{party}.log"

    def start(self, party: str) -> None:
        info = self.fed.ws[party] / "service" / "service.json"
        info.unlink(missing_ok=True)
        self.procs[party] = start_vfl(
            "serve", "--party", str(self.fed.ws[party]), *self.extra, log=self.log(party)
        )
        deadline = time.monotonic() + 60
        while not info.exists():
            assert self.procs[party].poll() is None, self.log(party).read_text()
            assert time.monotonic() < deadline, f"the service of {party} did not start"
            time.sleep(0.1)

    def kill(self, party: str) -> None:
        """SIGKILL the service and its workers (a crash of the machine)."""
        os.killpg(self.procs[party].pid, signal.SIGKILL)
        self.procs[party].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for party, proc in self.procs.items():
            try:
                assert proc.wait(timeout=60) == 0, self.log(party).read_text()
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def served_federation(base: Path, policies: dict[str, str] | None = None, **kw) -> Fed:
    fed = make_federation(base, **kw)
    for party in ("host", "arbiter"):
        (fed.ws[party] / "policy.toml").write_text((policies or {}).get(party, AUTO))
    return fed


def job_file(fed: Fed, job_id: str, kind: str = "train", **sections: dict) -> Path:
    from vfl.config import JobConfig

    train = {"key_bits": 1024, "max_epochs": 2, "batch_size": 64, **sections.pop("train", {})}
    config = JobConfig(id=job_id, kind=kind, train=train if kind == "train" else {}, **sections)
    path = fed.base / f"{job_id}.toml"
    path.write_text(config.to_toml())
    return path


def state(fed: Fed, party: str, job_id: str) -> str:
    with JobStore.for_workspace(fed.ws[party]) as store:
        return store.get(job_id).state


def wait_state(fed: Fed, party: str, job_id: str, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            now = state(fed, party, job_id)
        except Exception:  # noqa: BLE001 - not recorded yet
            now = None
        if now == wanted:
            return
        assert time.monotonic() < deadline, f"job {job_id} at {party} is {now}, not {wanted}"
        time.sleep(0.1)


def saved_epoch(fed: Fed, party: str, job_id: str) -> int:
    try:
        meta = json.loads((fed.ws[party] / "out" / job_id / "state" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return -1
    return max((c["epoch"] for c in meta["checkpoints"]), default=-1)


def wait_result(fed: Fed, party: str, job_id: str, timeout: float = 60) -> dict:
    """The result the party's worker wrote when it ended (it has stopped writing by then)."""
    path = fed.ws[party] / "service" / "jobs" / job_id / "result.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the worker of {job_id} at {party} did not end"
        time.sleep(0.1)
    return json.loads(path.read_text())
