"""Checking a job proposal at a party service (DESIGN.md §11): federation, job file, proposer, policy,
model, and the partner's caps (jobs, epsilon, rows per period).

Split out of ``vfl.parties.service``: ``check_proposal`` is what ``PartyService.propose`` asks before
it records a decision. A refusal is ``(rule, one line)``; the line kept in our store may name our
columns, what the proposer is told (``public_reason``) does not.

**Rows caps.** A job may use at most ``min(our rows, the rows the proposer declares)`` of our rows
(the intersection cannot be larger than either set); where a rows cap applies, that bound is
charged when the job is accepted (and kept beside the job, ``JobFiles.row_limit``: the job's PSI
stops a job that shares more, ``parties.alignment.require_row_limit``), and every completed job is
charged the intersection it reports. A proposal whose
bound would take the partner past ``rows`` for the period is refused naming ``[caps.<partner>]
rows``. The declared size is the proposer's id count, which the PSI of the job reveals anyway.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vfl.config import JobConfig
from vfl.errors import VflError
from vfl.parties.runner import build_job
from vfl.parties.service_jobs import SERVICE_DIR, job_epsilon
from vfl.service.policy import Cap, Decision
from vfl.service.store import REFUSED, JobRecord

if TYPE_CHECKING:
    from vfl.parties.service import PartyService

PERIOD_SECONDS = {
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "quarter": 91 * 86400,
    "year": 365 * 86400,
}

Refusal = tuple[str, str]  # (rule, one line)


@dataclass(frozen=True)
class Proposal:
    """One ``service.propose`` call as the service received it."""

    sender: str
    job_id: str
    kind: str
    job_toml: str
    digest: str
    rows: int = 0  # the ids the proposer brings (0: not declared)


@dataclass(frozen=True)
class Verdict:
    """``refusal`` set: refused; else the policy's ``decision`` and the rows of ours the job may use."""

    refusal: Refusal | None
    decision: Decision | None = None
    rows: int | None = None


def check_proposal(service: PartyService, p: Proposal) -> Verdict:
    """Go through the checks in order; the first that refuses decides."""
    me = service.party.id
    if p.digest != service.digest:
        return _no(
            "federation",
            f"refused: '{p.sender}' proposes job '{p.job_id}' with another federation file than "
            f"'{me}' has; every party must use the same federation.toml",
        )
    try:
        config = load_job_toml(service.workspace, p.job_toml)
        job = build_job(config, service.federation)
    except VflError as exc:
        return _no("job.toml", f"refused: the job file is not usable at '{me}': {exc}")
    if config.id != p.job_id or config.kind != p.kind:
        return _no("job.toml", "refused: the proposal's id or kind differs from its job file")
    if p.sender not in job.members.parties or service.federation.get(p.sender).role == "arbiter":
        return _no("proposer", f"refused: '{p.sender}' takes no data part in this job and cannot propose it")
    if me not in job.members.parties:
        return _no("job", f"refused: '{me}' takes no part in {p.kind} jobs")
    service.reload_policy()
    decision = service.policy.check(p.sender, p.kind, service.columns, options=config.train)
    if decision.refused:
        return _no(decision.rule, decision.message)
    if (
        config.kind == "predict"
        and job.model is not None
        and not (service.party.output_dir / job.model / "model.json").exists()
    ):
        return _no("model", f"refused: '{me}' has no model of job '{job.model}'")
    caps = service.policy.caps_for(p.sender)
    rows = None
    if any(cap.rows is not None for cap in caps):  # our data is counted only when a cap needs it
        try:
            rows = row_bound(service.data_rows(), p.rows)
        except VflError as exc:
            return _no("data", f"refused: '{me}' cannot count the rows of its data: {exc}")
    past = service.store.list()
    for cap in caps:
        refusal = check_cap(cap, past, config, rows, time.time())
        if refusal is not None:
            return Verdict(refusal)
    return Verdict(None, decision, rows)


def row_bound(ours: int | None, declared: int) -> int | None:
    """The most rows of ours a job can use: the intersection is at most either set."""
    if ours is None:
        return None  # a party without rows (the arbiter)
    return min(ours, declared) if declared > 0 else ours


def check_cap(
    cap: Cap, records: list[JobRecord], config: JobConfig, rows: int | None, now: float
) -> Refusal | None:
    """``(rule, line)`` if the job would take ``cap.partner`` past one of ``cap``'s limits this period."""
    since = now - PERIOD_SECONDS[cap.period]
    past = [r for r in records if r.proposer == cap.partner and r.created >= since and r.state != REFUSED]
    rule = f"[caps.{cap.partner}]"
    if cap.jobs is not None and len(past) + 1 > cap.jobs:
        return (
            f"{rule} jobs",
            f"refused by policy rule {rule} jobs: '{cap.partner}' has proposed {len(past)} job(s) this "
            f"{cap.period}, the cap is {cap.jobs}",
        )
    if cap.epsilon is not None:
        spent = sum(job_epsilon(config_of(r)) for r in past)
        want = job_epsilon(config)
        if spent + want > cap.epsilon + 1e-12:
            return (
                f"{rule} epsilon",
                f"refused by policy rule {rule} epsilon: this job spends epsilon {want:g}, "
                f"'{cap.partner}' has spent {spent:g} of {cap.epsilon:g} this {cap.period}",
            )
    if cap.rows is not None and rows is not None:
        used = sum(r.rows or 0 for r in past)
        if used + rows > cap.rows:
            return (
                f"{rule} rows",
                f"refused by policy rule {rule} rows: this job may use up to {rows} rows, '{cap.partner}' "
                f"has used {used} of {cap.rows} this {cap.period}; propose fewer ids or wait",
            )
    return None


def public_reason(rule: str, message: str, kind: str) -> str:
    """What the proposer is told: the rule, but never our column names (the full line stays in our store)."""
    if "columns" in rule:
        return (
            f"refused by policy rule {rule}: this party offers columns its policy does not allow for {kind} "
            "jobs; its operator must change [data] columns or the policy"
        )
    return message


def load_job_toml(workspace: Path, job_toml: str) -> JobConfig:
    """A proposed job file, read through a private file of the service (``JobConfig`` reads files)."""
    incoming = workspace / SERVICE_DIR / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    probe = incoming / f"{os.getpid()}-{threading.get_ident()}.toml"
    try:
        probe.write_text(job_toml)
        return JobConfig.load(probe)
    finally:
        probe.unlink(missing_ok=True)


def config_of(record: JobRecord) -> JobConfig:
    """The job file of a recorded job (an unreadable one counts as a job without options)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(record.job_toml)
    try:
        return JobConfig.load(f.name)
    except VflError:
        return JobConfig(id=record.id, kind=record.kind)
    finally:
        os.unlink(f.name)


def _no(rule: str, message: str) -> Verdict:
    return Verdict((rule, message))


__all__ = [
    "PERIOD_SECONDS",
    "Proposal",
    "Verdict",
    "check_cap",
    "check_proposal",
    "public_reason",
    "row_bound",
]
