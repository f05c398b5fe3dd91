"""Job records of a party service, in an embedded SQLite database in the party's workspace.

One row per job, whatever its state. Every change is one ``BEGIN IMMEDIATE`` transaction that
reads the job's state, checks that the transition is allowed and writes the new state, so two
processes (the service and a ``vfl jobs approve`` run by an operator, say) can update the same
job at once: one of them wins, the other gets a ``JobStateError`` naming the state it found.
The database runs in WAL mode with ``synchronous=FULL``: a committed transition survives a power
cut, and readers never block the writer.

Lifecycle (``TRANSITIONS`` is the single source of truth)::

    propose                          -> proposed
    proposed          --queue-->        awaiting-approval    (the policy wants a person)
    proposed | awaiting-approval --approve-->  approved
    proposed | awaiting-approval --refuse-->   refused
    approved          --start(pid)-->   running
    running           --finish-->       completed
    approved | running --fail-->        failed               (could not start, or broke)
    any state not final --cancel-->     cancelled
    running, resume=True --start(pid)--> running             (a new worker after recover())

``completed``, ``failed``, ``cancelled`` and ``refused`` are final: nothing leaves them.

``recover()`` runs when the service starts. A job still ``running`` whose worker process is gone
(the service or the machine died) is **resumed** if its kind can resume from its checkpoints
(``train``, DESIGN.md §12): it stays ``running`` with ``resume=True`` and no pid, and the service
starts a new worker for it (``start(pid)`` is allowed again for such a job). Any other kind
(``psi``, ``predict``: a crash there means starting again) is marked **failed** with a message
saying why.

The schema has a version table; ``MIGRATIONS`` lists the steps from one version to the next, and
opening a database applies the missing ones in one transaction. A database written by a newer
vfl is refused rather than misread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vfl.errors import VflError

PROPOSED = "proposed"
AWAITING_APPROVAL = "awaiting-approval"
APPROVED = "approved"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
REFUSED = "refused"

STATES = (PROPOSED, AWAITING_APPROVAL, APPROVED, RUNNING, COMPLETED, FAILED, CANCELLED, REFUSED)
FINAL_STATES = frozenset({COMPLETED, FAILED, CANCELLED, REFUSED})
ACTIVE_STATES = frozenset(STATES) - FINAL_STATES

# action -> the states it may start from, and the state it leads to
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "queue": (frozenset({PROPOSED}), AWAITING_APPROVAL),
    "approve": (frozenset({PROPOSED, AWAITING_APPROVAL}), APPROVED),
    "refuse": (frozenset({PROPOSED, AWAITING_APPROVAL}), REFUSED),
    "start": (frozenset({APPROVED}), RUNNING),  # and RUNNING with resume=True (see start)
    "finish": (frozenset({RUNNING}), COMPLETED),
    "fail": (frozenset({APPROVED, RUNNING}), FAILED),
    "cancel": (frozenset({PROPOSED, AWAITING_APPROVAL, APPROVED, RUNNING}), CANCELLED),
}

RESUMABLE_KINDS = ("train",)
DEFAULT_FILE = "jobs.db"  # in the party's workspace (JobStore.for_workspace)
SCHEMA_VERSION = 2
REFUSED_CALLS_KEPT = 1000  # refused control calls kept (newest)

# MIGRATIONS[v] takes a database from version v to v + 1 (version 0: empty file).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            proposer TEXT NOT NULL,
            options_digest TEXT NOT NULL DEFAULT '',
            job_toml TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            updated REAL NOT NULL,
            started REAL,
            ended REAL,
            outcome TEXT NOT NULL DEFAULT '',
            outputs TEXT NOT NULL DEFAULT '[]',
            pid INTEGER,
            pid_token TEXT,
            resume INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX jobs_state ON jobs (state)",
    ),
    (
        # the rows of ours a job may use (its bound when accepted; the intersection once it completed)
        "ALTER TABLE jobs ADD COLUMN rows INTEGER",
        # control calls refused before any other work (unpinned certificate, bad signature)
        """CREATE TABLE refused_calls (
            at REAL NOT NULL,
            claimed TEXT NOT NULL,
            tag TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# fmt: off
_COLUMN_NAMES = (
    "id", "kind", "state", "proposer", "options_digest", "job_toml", "created", "updated", "started",
    "ended", "outcome", "outputs", "pid", "pid_token", "resume", "rows",
)
# fmt: on
_COLUMNS = ", ".join(_COLUMN_NAMES)


class JobStoreError(VflError):
    """The job database cannot be used (damaged, locked too long, written by a newer vfl)."""


class UnknownJobError(JobStoreError):
    """No job with this id."""


class DuplicateJobError(JobStoreError):
    """A job with this id exists already (ids name output folders: they are never reused)."""


class JobStateError(JobStoreError):
    """A transition the lifecycle does not allow, e.g. approving a completed job."""


@dataclass(frozen=True)
class JobRecord:
    """One job as the store knows it. Times are seconds since the epoch (UTC); None = not yet."""

    id: str
    kind: str
    state: str
    proposer: str
    options_digest: str = ""
    job_toml: str = ""
    created: float = 0.0
    updated: float = 0.0
    started: float | None = None  # when its (latest) worker started: a resumed job restarts it
    ended: float | None = None
    outcome: str = ""  # the result or the reason (refused, failed, cancelled)
    outputs: tuple[str, ...] = field(default_factory=tuple)
    pid: int | None = None  # the worker process while running (kept when cancelled: stop it)
    resume: bool = False  # running, but its worker died: start a new one that resumes
    pid_token: str | None = None  # identifies the worker process beyond its pid (reuse)
    rows: int | None = None  # rows of ours it may use (bound at acceptance), or used (once completed)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def _from_row(cls, row: tuple) -> JobRecord:
        values = dict(zip(_COLUMN_NAMES, row, strict=True))
        values["outputs"] = tuple(json.loads(values["outputs"]))
        values["resume"] = bool(values["resume"])
        return cls(**values)


@dataclass(frozen=True)
class RefusedCall:
    """A control call the service refused before reading it: claimed sender, certificate, reason."""

    at: float
    claimed: str
    tag: str
    fingerprint: str
    reason: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_token(pid: int) -> str | None:
    """``boot id:start time`` of process ``pid`` (Linux), so a reused pid is not taken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return f"{_boot_id()}:{fields[19]}"  # field 22 of stat, counting from 1 (starttime)


def process_alive(pid: int, token: str | None = None) -> bool:
    """Is ``pid`` running (and, when ``token`` is known and can be read, the same process)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if token is not None:
        now = process_token(pid)
        if now is not None and now != token:
            return False
    return True


class JobStore:
    """The job records of one party, in the SQLite file ``path`` (created with its folder if missing).

    Safe to share between threads of one process, and between processes: each process opens
    its own ``JobStore`` on the same file.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JobStoreError(f"job database {self.path}: cannot switch to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise JobStoreError(f"job database {self.path} cannot be opened: {exc}") from exc
        except OSError as exc:
            raise JobStoreError(f"job database {self.path} cannot be created: {exc}") from exc

    @classmethod
    def for_workspace(cls, workspace: str | Path) -> JobStore:
        """The store of the party whose workspace is ``workspace`` (``<workspace>/jobs.db``)."""
        return cls(Path(workspace) / DEFAULT_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: no other writer until it commits or rolls back.

        An SQLite failure (busy past the time-out, disk full, damaged file) rolls back and becomes
        a ``JobStoreError`` naming the database.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JobStoreError(f"job database {self.path} is not available: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise JobStoreError(f"job database {self.path}: {exc}") from exc
                raise

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise JobStoreError(
                    f"job database {self.path} has schema version {version}, newer than this vfl "
                    f"understands ({SCHEMA_VERSION}); upgrade vfl"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # -- reading ----------------------------------------------------------------------------

    def _get(self, db: sqlite3.Connection, job_id: str) -> JobRecord:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job '{job_id}' in {self.path}")
        return JobRecord._from_row(row)

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._get(self._db, job_id)

    def list(self, states: Iterable[str] | None = None) -> list[JobRecord]:
        """Jobs (in the given states, or all), oldest first."""
        with self._lock:
            if states is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created, id").fetchall()
            else:
                wanted = sorted(set(states))
                unknown = [s for s in wanted if s not in STATES]
                if unknown:
                    raise JobStoreError(
                        f"unknown job state(s) {', '.join(unknown)}; known: {', '.join(STATES)}"
                    )
                marks = ", ".join("?" * len(wanted))
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY created, id", wanted
                ).fetchall()
        return [JobRecord._from_row(r) for r in rows]

    def refused_calls(self, limit: int = 100) -> list[RefusedCall]:
        """The most recent control calls refused before any other work, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, claimed, tag, fingerprint, reason FROM refused_calls ORDER BY rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [RefusedCall(*row) for row in rows]

    def record_refused_call(self, claimed: str, tag: str, fingerprint: str, reason: str) -> None:
        """Keep a refused control call (who it claimed to be, the certificate it presented, why)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO refused_calls (at, claimed, tag, fingerprint, reason) VALUES (?, ?, ?, ?, ?)",
                (time.time(), claimed, tag, fingerprint, reason),
            )
            # anyone may knock: keep the most recent REFUSED_CALLS_KEPT, so callers cannot grow the file
            db.execute(
                "DELETE FROM refused_calls WHERE rowid <= (SELECT max(rowid) FROM refused_calls) - ?",
                (REFUSED_CALLS_KEPT,),
            )

    def set_rows(self, job_id: str, rows: int) -> JobRecord:
        """The rows of ours the job may use (or, once it completed, used)."""
        with self._write() as db:
            self._get(db, job_id)
            db.execute("UPDATE jobs SET rows = ? WHERE id = ?", (int(rows), job_id))
            return self._get(db, job_id)

    # -- transitions ------------------------------------------------------------------------

    def propose(
        self, job_id: str, kind: str, proposer: str, job_toml: str = "", options_digest: str = ""
    ) -> JobRecord:
        """Record a new job in state ``proposed``; a job id is never reused."""
        if not job_id:
            raise JobStoreError("a job needs a non-empty id")
        now = time.time()
        with self._write() as db:
            exists = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if exists is not None:
                raise DuplicateJobError(
                    f"job '{job_id}' exists already (state {exists[0]}); a job id is used once: pick another"
                )
            db.execute(
                "INSERT INTO jobs (id, kind, state, proposer, options_digest, job_toml, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind, PROPOSED, proposer, options_digest, job_toml, now, now),
            )
            return self._get(db, job_id)

    def _transition(
        self, job_id: str, action: str, extra_from: Callable[[JobRecord], bool] | None = None, **set_: object
    ) -> JobRecord:
        sources, target = TRANSITIONS[action]
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state not in sources and not (extra_from is not None and extra_from(job)):
                allowed = " or ".join(s for s in STATES if s in sources)
                raise JobStateError(
                    f"cannot {action} job '{job_id}': it is {job.state}"
                    + (" (final)" if job.final else "")
                    + f"; only a job that is {allowed} can be {_PAST[action]}"
                )
            values = {"state": target, "updated": time.time(), **set_}
            assignments = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))
            return self._get(db, job_id)

    def queue(self, job_id: str) -> JobRecord:
        """proposed -> awaiting-approval (the policy wants a person to approve it)."""
        return self._transition(job_id, "queue")

    def approve(self, job_id: str) -> JobRecord:
        """proposed or awaiting-approval -> approved."""
        return self._transition(job_id, "approve")

    def refuse(self, job_id: str, reason: str) -> JobRecord:
        """proposed or awaiting-approval -> refused, with the reason (e.g. the policy rule)."""
        return self._transition(job_id, "refuse", outcome=reason, ended=time.time())

    def start(self, job_id: str, pid: int) -> JobRecord:
        """approved -> running in worker ``pid``; also a running job marked ``resume`` by ``recover``."""
        now = time.time()
        return self._transition(
            job_id,
            "start",
            extra_from=lambda job: job.state == RUNNING and job.resume,
            pid=pid,
            pid_token=process_token(pid),
            resume=0,
            started=now,
        )

    def finish(self, job_id: str, outcome: str = "", outputs: Iterable[str | Path] = ()) -> JobRecord:
        """running -> completed, with a one-line outcome and the paths of what it wrote."""
        paths = json.dumps([str(p) for p in outputs])
        return self._transition(
            job_id, "finish", outcome=outcome, outputs=paths, ended=time.time(), pid=None, resume=0
        )

    def fail(self, job_id: str, reason: str) -> JobRecord:
        """approved or running -> failed, with the reason."""
        return self._transition(job_id, "fail", outcome=reason, ended=time.time(), pid=None, resume=0)

    def cancel(self, job_id: str, reason: str = "cancelled") -> JobRecord:
        """Any job not yet final -> cancelled.

        Stopping a running worker is the caller's part: the record returned keeps its ``pid``.
        """
        return self._transition(job_id, "cancel", outcome=reason, ended=time.time(), resume=0)

    def recover(
        self,
        resumable: Iterable[str] = RESUMABLE_KINDS,
        alive: Callable[[int, str | None], bool] = process_alive,
    ) -> list[JobRecord]:
        """On service start: settle every job left ``running`` by a worker that is gone.

        A resumable kind stays ``running`` with ``resume=True`` and no pid (start a new worker
        for it); any other kind is marked ``failed``. Jobs whose worker still runs are left
        alone. Returns the jobs it changed.
        """
        kinds = set(resumable)
        changed: list[JobRecord] = []
        with self._write() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = ?", (RUNNING,)).fetchall()
            now = time.time()
            for job in map(JobRecord._from_row, rows):
                if job.resume or (job.pid is not None and alive(job.pid, job.pid_token)):
                    continue
                who = f"its worker (pid {job.pid})" if job.pid is not None else "its worker"
                if job.kind in kinds:
                    db.execute(
                        "UPDATE jobs SET resume = 1, pid = NULL, pid_token = NULL, updated = ?, outcome = ? "
                        "WHERE id = ?",
                        (now, f"{who} stopped; resuming from its checkpoint", job.id),
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET state = ?, pid = NULL, pid_token = NULL, updated = ?, ended = ?, "
                        "outcome = ? WHERE id = ?",
                        (
                            FAILED,
                            now,
                            now,
                            f"{who} stopped while the job ran; a {job.kind} job cannot resume: run it again",
                            job.id,
                        ),
                    )
                changed.append(self._get(db, job.id))
        return changed


_PAST = {
    "queue": "queued for approval",
    "approve": "approved",
    "refuse": "refused",
    "start": "started",
    "finish": "finished",
    "fail": "failed",
    "cancel": "cancelled",
}
