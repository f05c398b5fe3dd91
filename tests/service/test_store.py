"""The job store: lifecycle, checked transitions, durability settings, recovery, real concurrent processes."""

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

from vfl.errors import VflError
from vfl.service import store as st
from vfl.service.store import (
    DuplicateJobError,
    JobStateError,
    JobStore,
    JobStoreError,
    UnknownJobError,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    with JobStore.for_workspace(tmp_path) as store:
        yield store


def _propose(jobs: JobStore, job_id: str = "j1", kind: str = "train") -> st.JobRecord:
    return jobs.propose(job_id, kind, "bank", '[job]\nid = "j1"\nkind = "train"\n', "sha256:abc")


def test_the_whole_lifecycle_is_recorded(jobs: JobStore) -> None:
    job = _propose(jobs)
    assert (job.state, job.proposer, job.kind, job.options_digest) == (
        "proposed",
        "bank",
        "train",
        "sha256:abc",
    )
    assert 'kind = "train"' in job.job_toml and job.created > 0 and job.started is None and job.ended is None
    assert jobs.queue("j1").state == "awaiting-approval"
    assert jobs.approve("j1").state == "approved"
    running = jobs.start("j1", os.getpid())
    assert (running.state, running.pid, running.resume) == ("running", os.getpid(), False)
    assert running.started is not None and running.pid_token is not None
    done = jobs.finish("j1", "auc 0.97", [Path("out/j1/model.json"), "out/j1/ledger.json"])
    assert (done.state, done.outcome, done.outputs, done.pid) == (
        "completed",
        "auc 0.97",
        ("out/j1/model.json", "out/j1/ledger.json"),
        None,
    )
    assert done.final and done.ended is not None and done.ended >= done.started >= done.created
    assert jobs.get("j1") == done


def test_refuse_fail_and_cancel_record_the_reason(jobs: JobStore) -> None:
    for job_id in ("a", "b", "c", "d"):
        _propose(jobs, job_id)
    assert jobs.refuse("a", "refused by policy rule [partners.bank] kinds").outcome.startswith("refused by")
    jobs.approve("b")
    assert (jobs.fail("b", "data file missing").state, jobs.get("b").outcome) == (
        "failed",
        "data file missing",
    )
    assert jobs.cancel("c").state == "cancelled"
    jobs.approve("d")
    jobs.start("d", os.getpid())
    cancelled = jobs.cancel("d", "stopped by operator")
    # the pid stays, so the caller knows which worker to stop
    assert (cancelled.state, cancelled.outcome, cancelled.pid) == (
        "cancelled",
        "stopped by operator",
        os.getpid(),
    )


def _to(jobs: JobStore, job_id: str, state: str) -> None:
    """Bring a new job to ``state`` through allowed transitions."""
    _propose(jobs, job_id)
    path = {
        "proposed": [],
        "awaiting-approval": ["queue"],
        "approved": ["approve"],
        "running": ["approve", "start"],
        "completed": ["approve", "start", "finish"],
        "failed": ["approve", "fail"],
        "cancelled": ["cancel"],
        "refused": ["refuse"],
    }[state]
    for action in path:
        if action == "start":
            jobs.start(job_id, os.getpid())
        elif action in ("fail", "refuse"):
            getattr(jobs, action)(job_id, "reason")
        else:
            getattr(jobs, action)(job_id)
    assert jobs.get(job_id).state == state


ACTIONS = {
    "queue": lambda s, j: s.queue(j),
    "approve": lambda s, j: s.approve(j),
    "refuse": lambda s, j: s.refuse(j, "no"),
    "start": lambda s, j: s.start(j, os.getpid()),
    "finish": lambda s, j: s.finish(j, "ok"),
    "fail": lambda s, j: s.fail(j, "boom"),
    "cancel": lambda s, j: s.cancel(j),
}
ILLEGAL = [
    (state, action) for state in st.STATES for action in ACTIONS if state not in st.TRANSITIONS[action][0]
]


@pytest.mark.parametrize(("state", "action"), ILLEGAL, ids=[f"{a}-{s}" for s, a in ILLEGAL])
def test_every_illegal_transition_is_refused_and_changes_nothing(
    jobs: JobStore, state: str, action: str
) -> None:
    _to(jobs, "x", state)
    before = jobs.get("x")
    with pytest.raises(JobStateError) as info:
        ACTIONS[action](jobs, "x")
    assert isinstance(info.value, VflError)
    message = str(info.value)
    assert f"cannot {action} job 'x': it is {state}" in message and "\n" not in message
    assert jobs.get("x") == before


def test_the_two_named_cases_read_well(jobs: JobStore) -> None:
    _to(jobs, "done", "completed")
    with pytest.raises(
        JobStateError, match=r"cannot approve job 'done': it is completed \(final\); only a job"
    ):
        jobs.approve("done")
    with pytest.raises(JobStateError, match=r"cannot cancel job 'done': it is completed \(final\)"):
        jobs.cancel("done")


def test_ids_are_unique_and_unknown_ids_are_named(jobs: JobStore) -> None:
    _propose(jobs, "j1")
    with pytest.raises(DuplicateJobError, match="job 'j1' exists already"):
        _propose(jobs, "j1")
    with pytest.raises(UnknownJobError, match="no job 'nope'"):
        jobs.approve("nope")
    with pytest.raises(UnknownJobError):
        jobs.get("nope")


def test_list_filters_by_state_oldest_first(jobs: JobStore) -> None:
    for job_id in ("c", "a", "b"):
        _propose(jobs, job_id)
    jobs.approve("a")
    assert [j.id for j in jobs.list()] == ["c", "a", "b"]
    assert [j.id for j in jobs.list(states=["proposed"])] == ["c", "b"]
    assert [j.id for j in jobs.list(states={"approved", "running"})] == ["a"]
    assert jobs.list(states=[]) == []
    with pytest.raises(JobStoreError, match="unknown job state"):
        jobs.list(states=["done"])


def test_durability_settings_schema_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ws" / "jobs.db"
    with JobStore(path) as jobs:
        _propose(jobs)
        assert jobs._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert jobs._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert jobs.schema_version() == st.SCHEMA_VERSION
    with JobStore(path) as again:  # reopening migrates nothing and keeps the rows
        assert again.get("j1").state == "proposed"
        assert again.schema_version() == st.SCHEMA_VERSION


def test_a_newer_schema_or_a_damaged_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    JobStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(JobStoreError, match="schema version 99, newer than this vfl"):
        JobStore(path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JobStoreError, match="junk.db cannot be opened"):
        JobStore(junk)


def test_migrations_run_from_an_older_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobs.db"
    with JobStore(path) as jobs:
        _propose(jobs)
    monkeypatch.setattr(st, "MIGRATIONS", (*st.MIGRATIONS, ("ALTER TABLE jobs ADD COLUMN note TEXT",)))
    monkeypatch.setattr(st, "SCHEMA_VERSION", st.SCHEMA_VERSION + 1)
    with JobStore(path) as jobs:
        assert jobs.schema_version() == st.SCHEMA_VERSION
        assert "note" in [r[1] for r in jobs._db.execute("PRAGMA table_info(jobs)")]
        assert jobs.get("j1").state == "proposed"


# -- recovery with real processes ---------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


def test_recover_resumes_training_and_fails_the_rest(jobs: JobStore) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for job_id, kind in (("train-dead", "train"), ("psi-dead", "psi"), ("train-alive", "train")):
            _propose(jobs, job_id, kind)
            jobs.approve(job_id)
        dead = _dead_pid()
        jobs.start("train-dead", dead)
        jobs.start("psi-dead", dead)
        jobs.start("train-alive", alive.pid)

        changed = jobs.recover()
        assert sorted(j.id for j in changed) == ["psi-dead", "train-dead"]
        resumed = jobs.get("train-dead")
        assert (resumed.state, resumed.resume, resumed.pid) == ("running", True, None)
        assert f"pid {dead}" in resumed.outcome
        failed = jobs.get("psi-dead")
        assert failed.state == "failed" and "a psi job cannot resume" in failed.outcome
        assert jobs.get("train-alive").pid == alive.pid and not jobs.get("train-alive").resume

        assert jobs.recover() == []  # idempotent
        restarted = jobs.start("train-dead", alive.pid)  # a new worker takes the resumed job
        assert (restarted.state, restarted.pid, restarted.resume) == ("running", alive.pid, False)
        with pytest.raises(JobStateError):  # a running job that is not marked resume cannot start twice
            jobs.start("train-dead", alive.pid)
    finally:
        alive.kill()
        alive.wait()


def test_a_reused_pid_is_not_taken_for_the_worker(jobs: JobStore) -> None:
    _propose(jobs, "j", "train")
    jobs.approve("j")
    jobs.start("j", os.getpid())
    assert st.process_alive(os.getpid(), jobs.get("j").pid_token)
    # the same pid, but another process (another start time): the worker is gone
    jobs._db.execute("UPDATE jobs SET pid_token = 'other-boot:1' WHERE id = 'j'")
    assert [j.id for j in jobs.recover()] == ["j"]
    assert jobs.get("j").resume


# -- concurrency across processes ----------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from vfl.service.store import JobStore, JobStateError
    db, mode, go, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    store = JobStore(db)
    while time.time() < go:
        time.sleep(0.001)
    if mode == "race":
        for i in range(n):
            try:
                store.start(f"race-{i}", os.getpid())
                print("won", i, flush=True)
            except JobStateError:
                print("lost", i, flush=True)
    elif mode in ("approve", "refuse"):
        for i in range(n):
            try:
                store.approve(f"race-{i}") if mode == "approve" else store.refuse(f"race-{i}", "no")
                print("won", i, flush=True)
            except JobStateError:
                print("lost", i, flush=True)
    else:
        for i in range(n):
            job = f"{mode}-{i}"
            store.propose(job, "train", mode)
            store.approve(job)
            store.start(job, os.getpid())
            store.finish(job, "ok", [f"out/{job}"])
        print("done", flush=True)
    """
)


def _workers(db: Path, modes: list[str], n: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    go = time.time() + 1.5  # every process is up and waiting before any writes
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db), mode, str(go), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for mode in modes
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(out)
    return outs


def _proposed(tmp_path: Path, n: int, then: str) -> tuple[Path, int]:
    """A store with ``n`` proposed jobs ``race-<i>``, each then approved or queued (``then``)."""
    db = tmp_path / "jobs.db"
    with JobStore(db) as jobs:
        for i in range(n):
            jobs.propose(f"race-{i}", "train", "bank")
            getattr(jobs, then)(f"race-{i}")
    return db, n


def test_processes_racing_for_the_same_jobs_never_both_win(tmp_path: Path) -> None:
    db, n = _proposed(tmp_path, 40, "approve")
    outs = _workers(db, ["race"] * 3, n)
    wins = [line.split()[1] for out in outs for line in out.splitlines() if line.startswith("won")]
    assert sorted(wins, key=int) == [str(i) for i in range(n)]  # each job started exactly once
    with JobStore(db) as jobs:
        assert {j.state for j in jobs.list()} == {"running"}
        winners = {j.pid for j in jobs.list()}
        assert len(winners) >= 1


def test_approve_and_refuse_of_the_same_job_from_two_processes(tmp_path: Path) -> None:
    """Mutually exclusive transitions: per job exactly one process wins, and the record says which."""
    db, n = _proposed(tmp_path, 40, "queue")
    approve, refuse = _workers(db, ["approve", "refuse"], n)
    won = {
        name: {int(line.split()[1]) for line in out.splitlines() if line.startswith("won")}
        for name, out in (("approved", approve), ("refused", refuse))
    }
    assert won["approved"] | won["refused"] == set(range(n))
    assert not won["approved"] & won["refused"]
    with JobStore(db) as jobs:
        for i in range(n):
            assert jobs.get(f"race-{i}").state == ("approved" if i in won["approved"] else "refused")


def test_many_writers_at_once_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    JobStore(db).close()
    outs = _workers(db, ["p1", "p2", "p3", "p4"], 25)
    assert all(out.strip() == "done" for out in outs)
    with JobStore(db) as jobs:
        records = jobs.list()
    assert len(records) == 100 and {j.state for j in records} == {"completed"}
    assert {j.proposer for j in records} == {"p1", "p2", "p3", "p4"}


def test_a_writer_killed_mid_stream_leaves_every_committed_transition(tmp_path: Path) -> None:
    """SIGKILL a process while it writes: the file is intact and holds what it reported committed."""
    db = tmp_path / "jobs.db"
    JobStore(db).close()
    script = textwrap.dedent(
        """
        import sys
        from vfl.service.store import JobStore
        store = JobStore(sys.argv[1])
        i = 0
        while True:
            store.propose(f"k-{i}", "psi", "bank")
            store.approve(f"k-{i}")
            print(i, flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seen = [proc.stdout.readline() for _ in range(30)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rest = proc.stdout.read().split()
    last = int(rest[-1]) if rest else int(seen[-1])
    with JobStore(db) as jobs:
        assert jobs._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = {j.id: j.state for j in jobs.list()}
    for i in range(last + 1):
        assert states[f"k-{i}"] == "approved"
    assert len(states) - (last + 1) <= 1  # at most one job proposed after the last report


def test_sqlite_failures_become_store_errors(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with JobStore(db) as jobs, JobStore(db, timeout=0.2) as other:
        jobs._db.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(JobStoreError, match="jobs.db is not available: database is locked"):
                other.propose("j", "psi", "bank")
        finally:
            jobs._db.execute("ROLLBACK")
        assert other.propose("j", "psi", "bank").state == "proposed"


def test_refused_calls_are_kept_newest_first_and_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(st, "REFUSED_CALLS_KEPT", 3)
    with JobStore(tmp_path / "jobs.db") as jobs:
        for i in range(5):
            jobs.record_refused_call("guest", f"service/{i}/propose", f"sha256:{i}", "not pinned")
        calls = jobs.refused_calls()
    assert [c.fingerprint for c in calls] == ["sha256:4", "sha256:3", "sha256:2"]
    assert calls[0].claimed == "guest" and calls[0].reason == "not pinned"


def test_rows_are_recorded_per_job(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.db") as jobs:
        jobs.propose("r1", "psi", "bank")
        assert jobs.get("r1").rows is None
        assert jobs.set_rows("r1", 120).rows == 120
        with pytest.raises(st.UnknownJobError):
            jobs.set_rows("nope", 1)
