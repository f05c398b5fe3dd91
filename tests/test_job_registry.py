"""A new kind of job is one protocol (a message table and role functions) plus one registry entry.

This test adds a trivial kind, ``count`` (each host tells the guest how many rows it has), the way a
real one is added, and runs it through the same ``run_role`` path as ``vfl run`` and ``vfl.simulate``:
agreement, checked messages, barrier, and a ledger derived from the protocol that ran.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from vfl.errors import ConfigError
from vfl.parties import jobs
from vfl.parties.common import Job, ledger_for
from vfl.parties.jobs import JobKind, Outcome, RoleContext, run_role
from vfl.parties.simulation import run_parties
from vfl.protocols.messages import INT, Protocol, message, one
from vfl.transport import LocalNetwork

# --- the protocol module (would live in protocols/count.py) -------------------------------------

COUNT = Protocol(
    "count",
    (message("count.rows", "count/{host}", "host", "guest", "each host's number of rows", rows=1, n=INT),),
    never={"guest": ("any host row",)},
)
(ROWS,) = COUNT.messages


def count_guest(session, hosts):
    session.uses(COUNT)
    return {h: int(one(session.recv(ROWS, h, host=h), "n")) for h in hosts}


def count_host(session, guest, n):
    session.uses(COUNT)
    session.send(ROWS, guest, pa.table({"n": [n]}), host=session.party)


# --- the registry entry (would be one JobKind in parties/jobs.py) --------------------------------


def _role(ctx: RoleContext) -> Outcome:
    session, job = ctx.session, ctx.job
    session.guard(lambda: session.agree(job.settings()))
    if ctx.role == "guest":
        result = count_guest(session, job.hosts)
    else:
        count_host(session, job.guest, len(ctx.data))
        result = None
    session.barrier("count")
    return Outcome(summary={"rows": result}, result=ledger_for(session))


@pytest.fixture
def count_kind(monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "count", JobKind("count", {"guest": _role, "host": _role}))


def test_a_new_job_kind_runs_through_the_registry(count_kind):
    job = Job("c", "guest", ("host1", "host2"), kind="count")
    network = LocalNetwork(list(job.parties))
    frames = {
        "guest": pd.DataFrame({"id": [1]}),
        "host1": pd.DataFrame({"id": [1, 2]}),
        "host2": pd.DataFrame({"id": [3, 4, 5]}),
    }
    roles = {
        p: (lambda p=p: run_role("count", RoleContext(job.session(network.channel(p)), job, frames[p])))
        for p in job.parties
    }
    outcomes = run_parties(network, roles)
    assert outcomes["guest"].summary["rows"] == {"host1": 2, "host2": 3}
    ledger = outcomes["guest"].result
    assert ledger.protocols == ["session", "count"]
    assert "each host's number of rows" in ledger.learns and "any host row" in ledger.never_learns
    assert {m["message"] for m in ledger.messages} == {"session.agree", "count.rows", "session.done"}
    assert not any("gradient" in item for item in ledger.learns)


def test_an_unknown_kind_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown kind of job 'nope'; known kinds: psi, train, predict"):
        jobs.job_kind("nope")


def test_a_served_jobs_rows_cap_stops_it_after_the_psi():
    """A host's service accepted the job for 3 shared rows; the PSI finds 4: the host stops the job
    with its policy's rule, before any further step, and the guest learns only the reason code."""
    from vfl.errors import PeerAbortedError, PolicyError
    from vfl.parties.common import RowLimit

    base = Job("capped", "guest", ("host",), kind="psi")
    frames = {"guest": pd.DataFrame({"id": [1, 2, 3, 4, 5]}), "host": pd.DataFrame({"id": [2, 3, 4, 5, 6]})}
    network = LocalNetwork(list(base.parties))
    limits = {"guest": None, "host": RowLimit("guest", 3)}
    seen: dict[str, BaseException] = {}

    def role(p: str) -> Outcome:
        job = Job("capped", "guest", ("host",), kind="psi", row_limit=limits[p])
        try:
            return run_role("psi", RoleContext(job.session(network.channel(p)), job, frames[p]))
        except Exception as exc:
            seen[p] = exc
            raise

    with pytest.raises(
        PolicyError, match=r"\[caps.guest\] rows: job 'capped' shares 4 rows, more than the 3"
    ):
        run_parties(network, {p: (lambda p=p: role(p)) for p in base.parties})
    assert isinstance(seen["guest"], PeerAbortedError) and seen["guest"].peer_code == "policy"
    assert "4 rows" not in str(seen["guest"])


def test_a_rows_cap_the_job_stays_within_lets_it_finish():
    from vfl.parties.common import RowLimit

    frames = {"guest": pd.DataFrame({"id": [1, 2, 3, 4, 5]}), "host": pd.DataFrame({"id": [2, 3, 4, 5, 6]})}
    network = LocalNetwork(["guest", "host"])
    job = Job("capped", "guest", ("host",), kind="psi", row_limit=RowLimit("guest", 4))
    roles = {
        p: (lambda p=p: run_role("psi", RoleContext(job.session(network.channel(p)), job, frames[p])))
        for p in job.parties
    }
    outcomes = run_parties(network, roles)
    assert outcomes["guest"].summary["intersection"] == 4
