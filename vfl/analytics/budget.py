"""The privacy budget ledger: epsilon spent per partner, capped per period, in a SQLite file.

Each party keeps one ``PrivacyBudget`` in its workspace. A job goes through::

    budget.reserve(job_id, partner, epsilon)   # at agreement time, before any data moves
    ...                                        # the job runs
    budget.commit(job_id)                      # on success
    budget.release(job_id)                     # on a clean failure (nothing was released)

**What counts as spent.** ``reserved`` and ``committed`` entries whose reservation time lies in the
period (a rolling window: ``"30d"`` is the last 30 days; ``"all"`` never forgets). A reservation counts
from the moment it is written, so a job that crashes between reserve and commit keeps its epsilon
spent (it may have released numbers before dying) until an operator releases it explicitly. Only
``release`` returns epsilon, and only for a reservation not yet committed.

**Crash safety.** Every change is one SQLite transaction (``BEGIN IMMEDIATE``: the check of the cap
and the write happen under the database's write lock, so two processes reserving against the same
cap are serialized and only what fits is granted); the database is in WAL mode with
``synchronous=FULL``, so a committed transaction survives a process kill or power loss, and an
interrupted one leaves no trace. ``reserve`` is idempotent on ``(job_id, partner)``: re-running a job
(after a crash, or a retry) finds its reservation and does not spend again.

**Caps** come from the party's configuration: ``{"bank": {"epsilon": 3.0, "period": "30d"}, "*": {...}}``
(``"*"`` for any other partner); without one, :data:`DEFAULT_CAP` applies (3 default jobs a month).
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfl.errors import ConfigError, OutputError

DEFAULT_CAP: dict[str, Any] = {"epsilon": 3.0, "period": "30d"}
_UNITS = {"h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_TOLERANCE = 1e-9
STATES = ("reserved", "committed", "released")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    job_id      TEXT NOT NULL,
    partner     TEXT NOT NULL,
    epsilon     REAL NOT NULL CHECK (epsilon > 0),
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    reserved_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (job_id, partner)
);
CREATE INDEX IF NOT EXISTS spend_partner ON spend (partner, reserved_at);
"""


class BudgetExceededError(ConfigError):
    """A job would spend more epsilon with a partner than its cap allows in the period."""


def parse_period(period: str | None) -> float | None:
    """Seconds of a period such as ``"30d"``, ``"12h"``, ``"2w"``; ``None`` / ``"all"`` = no window."""
    if period is None or str(period).strip().lower() in ("all", "forever", "none"):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", str(period).lower())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"budget period must look like '30d', '12h', '2w' or 'all', got {period!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Cap:
    epsilon: float
    period: str | None

    @property
    def seconds(self) -> float | None:
        return parse_period(self.period)


@dataclass(frozen=True)
class Entry:
    """One reservation: ``state`` is reserved, committed or released; times are Unix seconds."""

    job_id: str
    partner: str
    epsilon: float
    state: str
    reserved_at: float
    updated_at: float


def _cap_from(partner: str, spec: Any) -> Cap:
    if not isinstance(spec, Mapping) or "epsilon" not in spec:
        raise ConfigError(
            f"budget cap for {partner!r} must be {{epsilon = ..., period = '30d'}}, got {spec!r}"
        )
    eps = spec["epsilon"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"budget cap for {partner!r}: epsilon must be a positive number, got {eps!r}")
    unknown = sorted(set(spec) - {"epsilon", "period"})
    if unknown:
        raise ConfigError(f"budget cap for {partner!r}: unknown keys {unknown}")
    period = spec.get("period", DEFAULT_CAP["period"])
    return Cap(float(eps), None if parse_period(period) is None else str(period).strip().lower())


class PrivacyBudget:
    """The ledger at ``path`` (created with mode 0600 if missing). Safe for several processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        caps: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.caps = {str(p): _cap_from(str(p), spec) for p, spec in dict(caps or {}).items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            # check_same_thread=False: a simulation opens the ledger in one thread and its party runs in another
            # (one party uses it at a time)
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            with self._transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot open the privacy budget ledger {self.path}: {exc}") from exc

    # -- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PrivacyBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def cap(self, partner: str) -> Cap:
        """The cap for ``partner`` (its own, else ``"*"``, else :data:`DEFAULT_CAP`)."""
        if partner in self.caps:
            return self.caps[partner]
        if "*" in self.caps:
            return self.caps["*"]
        return _cap_from("*", DEFAULT_CAP)

    def _spent(
        self, partner: str, seconds: float | None, now: float, exclude_job: str | None = None
    ) -> float:
        since = -math.inf if seconds is None else now - seconds
        row = self._db.execute(
            "SELECT COALESCE(SUM(epsilon), 0) FROM spend WHERE partner = ? AND state IN ('reserved', 'committed') "
            "AND reserved_at >= ? AND job_id IS NOT ?",
            (partner, since, exclude_job),
        ).fetchone()
        return float(row[0])

    # -- the job lifecycle --------------------------------------------------------------------
    def reserve(self, job_id: str, partner: str, epsilon: float, *, now: float | None = None) -> Entry:
        """Reserve ``epsilon`` for ``job_id`` with ``partner``, or refuse naming the partner, spent and cap.

        Idempotent: if the job already holds a reservation (or a committed spend) with this partner, it
        is returned unchanged and nothing more is spent. A released job may reserve again.
        """
        if not (isinstance(epsilon, (int, float)) and epsilon > 0 and math.isfinite(epsilon)):
            raise ConfigError(f"epsilon to reserve must be a positive number, got {epsilon!r}")
        if not job_id or not partner:
            raise ConfigError("reserve needs a job id and a partner name")
        now = time.time() if now is None else now
        cap = self.cap(partner)
        with self._transaction():
            row = self._db.execute(
                "SELECT * FROM spend WHERE job_id = ? AND partner = ?", (job_id, partner)
            ).fetchone()
            if row is not None and row[3] in ("reserved", "committed"):
                entry = Entry(*row)
                if not math.isclose(entry.epsilon, epsilon, rel_tol=1e-12, abs_tol=1e-12):
                    raise ConfigError(
                        f"job {job_id!r} already holds epsilon {entry.epsilon:g} with {partner!r} "
                        f"({entry.state}); it cannot be re-run with epsilon {epsilon:g}: use a new job id"
                    )
                return entry
            spent = self._spent(partner, cap.seconds, now, exclude_job=job_id)
            if spent + epsilon > cap.epsilon + _TOLERANCE:
                per = "in total" if cap.period is None else f"per {cap.period}"
                raise BudgetExceededError(
                    f"privacy budget with partner {partner!r} exceeded: spent {spent:g} of the cap "
                    f"{cap.epsilon:g} {per}, and job {job_id!r} needs {epsilon:g} more "
                    f"({max(cap.epsilon - spent, 0):g} left)"
                )
            self._db.execute(
                "INSERT INTO spend (job_id, partner, epsilon, state, reserved_at, updated_at) "
                "VALUES (?, ?, ?, 'reserved', ?, ?) ON CONFLICT (job_id, partner) DO UPDATE SET "
                "epsilon = excluded.epsilon, state = 'reserved', reserved_at = excluded.reserved_at, "
                "updated_at = excluded.updated_at",
                (job_id, partner, float(epsilon), now, now),
            )
        return Entry(job_id, partner, float(epsilon), "reserved", now, now)

    def commit(self, job_id: str, *, now: float | None = None) -> int:
        """Mark every reservation of ``job_id`` spent for good; idempotent. Returns how many changed.

        Refuses a job with no reservation, or one that was released (it must reserve again first).
        """
        return self._finish(job_id, "committed", now)

    def release(self, job_id: str, *, now: float | None = None) -> int:
        """Give back the epsilon of ``job_id``'s open reservations (clean failure); committed ones stay."""
        return self._finish(job_id, "released", now)

    def _finish(self, job_id: str, state: str, now: float | None) -> int:
        now = time.time() if now is None else now
        with self._transaction():
            states = [r[0] for r in self._db.execute("SELECT state FROM spend WHERE job_id = ?", (job_id,))]
            if not states:
                raise ConfigError(f"job {job_id!r} has no privacy budget reservation")
            if state == "committed" and set(states) == {"released"}:
                raise ConfigError(f"job {job_id!r} was released; reserve again before committing")
            cur = self._db.execute(
                "UPDATE spend SET state = ?, updated_at = ? WHERE job_id = ? AND state = 'reserved'",
                (state, now, job_id),
            )
            return cur.rowcount

    # -- reading ------------------------------------------------------------------------------
    def spent(self, partner: str, period: str | None | object = ..., *, now: float | None = None) -> float:
        """Epsilon reserved or committed with ``partner`` in ``period`` (default: the partner's cap period)."""
        now = time.time() if now is None else now
        seconds = self.cap(partner).seconds if period is ... else parse_period(period)  # type: ignore[arg-type]
        return self._spent(partner, seconds, now)

    def entries(self, partner: str | None = None, job_id: str | None = None) -> list[Entry]:
        """Every entry (oldest first), optionally of one partner or job."""
        sql, args = "SELECT * FROM spend WHERE 1 = 1", []
        if partner is not None:
            sql, args = sql + " AND partner = ?", [*args, partner]
        if job_id is not None:
            sql, args = sql + " AND job_id = ?", [*args, job_id]
        return [Entry(*r) for r in self._db.execute(sql + " ORDER BY reserved_at, job_id, partner", args)]

    def summary(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """One row per partner (configured or seen) for ``vfl budget``: spent, open, cap, period, left."""
        now = time.time() if now is None else now
        partners = sorted({p for p in self.caps if p != "*"} | {e.partner for e in self.entries()})
        out = []
        for p in partners:
            cap = self.cap(p)
            spent = self._spent(p, cap.seconds, now)
            since = -math.inf if cap.seconds is None else now - cap.seconds
            (open_eps,) = self._db.execute(
                "SELECT COALESCE(SUM(epsilon), 0) FROM spend WHERE partner = ? AND state = 'reserved' AND reserved_at >= ?",
                (p, since),
            ).fetchone()
            out.append(
                {
                    "partner": p,
                    "spent": spent,
                    "reserved": float(open_eps),
                    "cap": cap.epsilon,
                    "period": cap.period or "all",
                    "remaining": max(cap.epsilon - spent, 0.0),
                }
            )
        return out


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
