"""The control protocol of a party service (``vfl serve``): propose, decide, start, cancel, status.

A party with data in a job (the guest, or a host) proposes it to every other party of it; each
partner's service (the guest's too, when it serves) checks the proposal against its own policy (``vfl/service/policy.py``) and answers at once: accepted, queued for a
person's approval, or refused with the rule that refused it. Once every partner has approved, the
proposer sends every party the address of every party's job inbox, and each service starts the job
as a worker process running the normal role of the job (``vfl run``'s code). A cancel from any
party reaches every service; a status call tells the state of a job, or (for ``vfl federation
check``) the partner's version and the job kinds its policy accepts from the caller.

Each message is one call over ``vfl.transport.rpc`` (a signed request, a signed answer).

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``service.propose`` | guest, host -> any | job id, kind, job.toml, federation digest, version, the number of ids the proposer brings | the whole job as the proposer wants it run, and the size of the proposer's id set (which the job's PSI reveals anyway) |
| ``service.decision`` | any -> guest, host | accept / queue / refuse, the rule, one line, the job inbox port | the partner's decision and the policy rule that made it |
| ``service.start`` | guest, host -> any | the job inbox address of every party | where every party's job inbox listens |
| ``service.cancel`` | any -> any | job id, who cancelled | that the job was cancelled |
| ``service.status`` | any -> any | a job id (or none) | that the caller asks |
| ``service.report`` | any -> any | state and outcome of the job, version, kinds accepted from the caller | the partner's state of the job, its vfl version and what its policy accepts from the caller |

No data, column values, labels or per-row values cross in these messages; the decision reveals
the one rule that decided (so the proposer can fix its job), never the rest of the policy.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from vfl import __version__
from vfl.errors import ProtocolError
from vfl.protocols.messages import ANY_ROLE, INT, TEXT, Protocol, message, one
from vfl.protocols.session import Session

PROPOSERS = ("guest", "host")  # the parties with data in a job propose it; the arbiter never does

SERVICE = Protocol(
    "service",
    (
        message(
            "service.propose", "service/{req}/propose", PROPOSERS, ANY_ROLE,
            "a proposed job: its id, kind, job.toml, the federation's digest, the proposer's version "
            "and the number of ids it brings (its PSI set size)",
            rows=1, job=TEXT, kind=TEXT, job_toml=TEXT, federation=TEXT, version=TEXT, ids=INT,
        ),
        message(
            "service.decision", "service/{req}/decision", ANY_ROLE, PROPOSERS,
            "whether the partner accepts, queues or refuses a job, the policy rule that decided, "
            "and the port of its job inbox",
            rows=1, job=TEXT, action=TEXT, rule=TEXT, message=TEXT, state=TEXT, port=INT,
        ),
        message(
            "service.start", "service/{req}/start", PROPOSERS, ANY_ROLE,
            "the job inbox address of every party of an approved job",
            rows=1, job=TEXT, addresses=TEXT,
        ),
        message(
            "service.cancel", "service/{req}/cancel", ANY_ROLE, ANY_ROLE,
            "that a party cancelled a job", rows=1, job=TEXT, reason=TEXT,
        ),
        message(
            "service.status", "service/{req}/status", ANY_ROLE, ANY_ROLE,
            "that the caller asks for the state of a job (or of the service)", rows=1, job=TEXT,
        ),
        message(
            "service.report", "service/{req}/report", ANY_ROLE, ANY_ROLE,
            "the partner's state and outcome of a job, its vfl version and the job kinds its policy "
            "accepts from the caller",
            rows=1, job=TEXT, state=TEXT, outcome=TEXT, version=TEXT, kinds=TEXT, port=INT,
        ),
    ),
    never={
        "guest": ("a partner's data, columns or policy beyond the rule that decided",),
        "host": ("the guest's data, labels or scores", "a partner's policy beyond the rule that decided"),
        "arbiter": ("any party's data, labels or scores",),
    },
)  # fmt: skip
PROPOSE, DECISION, START, CANCEL, STATUS, REPORT = SERVICE.messages


@dataclass(frozen=True)
class Decision:
    """A partner's answer to a proposal."""

    party: str
    job: str
    action: str  # accept | queue | refuse
    rule: str
    message: str
    state: str
    port: int


@dataclass(frozen=True)
class Report:
    """A partner's answer to a status, start or cancel call."""

    party: str
    job: str
    state: str
    outcome: str
    version: str
    kinds: dict[str, str] = field(default_factory=dict)  # kind -> "auto" | "manual"
    port: int = 0


def _req() -> str:
    return secrets.token_hex(8)


def _report(session: Session, frm: str, req: str) -> Report:
    t = session.recv(REPORT, frm, req=req)
    try:
        kinds = json.loads(one(t, "kinds") or "{}")
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"party '{frm}' sent an unreadable list of job kinds") from exc
    return Report(
        frm, one(t, "job"), one(t, "state"), one(t, "outcome"), one(t, "version"), kinds, int(one(t, "port"))
    )


# ---- the asking side ------------------------------------------------------------------------------


def propose(
    session: Session, to: str, *, job: str, kind: str, job_toml: str, federation: str, ids: int = 0
) -> Decision:
    """Propose a job to ``to``; ``ids`` is how many ids the proposer brings (0: not said)."""
    session.uses(SERVICE)
    req = _req()
    table = pa.table(
        {
            "job": [job],
            "kind": [kind],
            "job_toml": [job_toml],
            "federation": [federation],
            "version": [__version__],
            "ids": [int(ids)],
        }
    )
    session.send(PROPOSE, to, table, req=req)
    t = session.recv(DECISION, to, req=req)
    return Decision(
        to,
        one(t, "job"),
        one(t, "action"),
        one(t, "rule"),
        one(t, "message"),
        one(t, "state"),
        int(one(t, "port")),
    )


def start(session: Session, to: str, *, job: str, addresses: dict[str, str]) -> Report:
    session.uses(SERVICE)
    req = _req()
    session.send(
        START, to, pa.table({"job": [job], "addresses": [json.dumps(addresses, sort_keys=True)]}), req=req
    )
    return _report(session, to, req)


def cancel(session: Session, to: str, *, job: str, reason: str) -> Report:
    session.uses(SERVICE)
    req = _req()
    session.send(CANCEL, to, pa.table({"job": [job], "reason": [reason]}), req=req)
    return _report(session, to, req)


def status(session: Session, to: str, *, job: str = "") -> Report:
    session.uses(SERVICE)
    req = _req()
    session.send(STATUS, to, pa.table({"job": [job]}), req=req)
    return _report(session, to, req)


# ---- the serving side -----------------------------------------------------------------------------


@dataclass
class Backend:
    """What a service does with each call (the service runtime in ``vfl.parties.service`` fills it in)."""

    propose: Callable[
        [str, str, str, str, str, str, int], Decision
    ]  # sender, job, kind, job_toml, federation, version, ids
    start: Callable[[str, str, dict[str, str]], Report]  # sender, job, addresses
    cancel: Callable[[str, str, str], Report]  # sender, job, reason
    status: Callable[[str, str], Report]  # sender, job


def answer(session: Session, sender: str, tag: str, backend: Backend) -> None:
    """Serve one call: match ``tag`` to its declaration, check it, let ``backend`` decide, answer."""
    session.uses(SERVICE)
    found = SERVICE.match(tag)
    if found is None:
        raise ProtocolError(f"party '{sender}' sent '{tag}', which is not a service call")
    msg, params = found
    req = params["req"]
    if msg is PROPOSE:
        t = session.recv(PROPOSE, sender, req=req)
        d = backend.propose(
            sender, one(t, "job"), one(t, "kind"), one(t, "job_toml"), one(t, "federation"), one(t, "version"),
            int(one(t, "ids")),
        )  # fmt: skip
        table = pa.table(
            {
                "job": [d.job], "action": [d.action], "rule": [d.rule], "message": [d.message],
                "state": [d.state], "port": [int(d.port)],
            }
        )  # fmt: skip
        session.send(DECISION, sender, table, req=req)
        return
    if msg is START:
        t = session.recv(START, sender, req=req)
        try:
            addresses = json.loads(one(t, "addresses"))
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"party '{sender}' sent unreadable job addresses") from exc
        r = backend.start(sender, one(t, "job"), {str(k): str(v) for k, v in addresses.items()})
    elif msg is CANCEL:
        t = session.recv(CANCEL, sender, req=req)
        r = backend.cancel(sender, one(t, "job"), one(t, "reason"))
    elif msg is STATUS:
        t = session.recv(STATUS, sender, req=req)
        r = backend.status(sender, one(t, "job"))
    else:
        raise ProtocolError(f"party '{sender}' sent '{tag}', which is an answer, not a call")
    table = pa.table(
        {
            "job": [r.job], "state": [r.state], "outcome": [r.outcome], "version": [r.version],
            "kinds": [json.dumps(r.kinds, sort_keys=True)], "port": [int(r.port)],
        }
    )  # fmt: skip
    session.send(REPORT, sender, table, req=req)


__all__ = ["SERVICE", "Backend", "Decision", "Report", "answer", "cancel", "propose", "start", "status"]
