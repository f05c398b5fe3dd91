"""The proposer's side of served jobs: ``vfl submit``, ``vfl score``, ``vfl jobs cancel`` and the
service part of ``vfl federation check`` (the calls of ``protocols/service.py``).

``submit_job`` (at the guest, or at a host with data in the job) proposes a job to every other party
of it, waits while any partner queues it for a person's approval, sends every party the job inbox
addresses once all approved, and then runs the proposer's own role here with the normal
``run_party`` (progress bars as in ``vfl run``), on the party's own address, or, when the party's
own service holds that address, on a free job port of that service. A refusal stops at once with the partner's one-line reason naming its rule;
the partners that had accepted are told the job is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vfl.config import Federation, JobConfig, PartyConfig
from vfl.errors import (
    ConfigError,
    DataError,
    JobCancelledError,
    PolicyError,
    ProtocolError,
    TransportError,
    VflError,
)
from vfl.io import atomic_write_text
from vfl.parties.common import ProgressFn
from vfl.parties.network import load_party_identity, to_peers, verify_membership
from vfl.parties.runner import RunOutcome, build_job, federation_digest
from vfl.parties.service_jobs import (
    JobFiles,
    PortPool,
    cancel_locally,
    count_rows,
    job_federation,
    members_of,
    read_service_info,
    run_job,
    with_port,
)
from vfl.protocols import service as control
from vfl.protocols.session import Session
from vfl.service.store import APPROVED, CANCELLED, REFUSED, JobStore
from vfl.transport.address import parse_address
from vfl.transport.probe import check_port_free
from vfl.transport.rpc import SERVICE_JOB, RpcChannel

log = logging.getLogger(__name__)

# (party, message): the guest waits for a partner (approval)
WaitFn = Callable[[str, str], None]


class ProposalRefusedError(PolicyError):
    """A partner's service refused the job; the message names the partner and its rule."""


@dataclass
class Control:
    """The guest's control session with the other parties' services."""

    party: PartyConfig
    federation: Federation
    channel: RpcChannel
    session: Session

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, workspace: str | Path, federation_file: str | Path | None = None, **timeouts: float
    ) -> Iterator[Control]:
        """The session for the duration of a ``with`` block (its connections close at the end)."""
        party = PartyConfig.load(workspace)
        path = Path(federation_file or party.workspace / "federation.toml")
        federation = Federation.load(path)
        identity = load_party_identity(party)
        verify_membership(party, federation, identity, str(path))
        with RpcChannel(identity, to_peers(federation), **timeouts) as channel:
            yield cls(
                party, federation, channel, Session(channel, members_of(federation), job_id=SERVICE_JOB)
            )


def submit_job(
    workspace: str | Path,
    job_file: str | Path,
    *,
    federation_file: str | Path | None = None,
    progress: ProgressFn | None = None,
    on_wait: WaitFn | None = None,
    approval_timeout: float = 24 * 3600.0,
    poll: float = 1.0,
    settings: object = None,
    data: str | Path | None = None,
) -> RunOutcome:
    """Propose the job in ``job_file`` to the federation's services, then run the guest's role of it."""
    workspace = Path(workspace)
    config = JobConfig.load(job_file)
    job_toml = Path(job_file).read_text()
    with Control.open(workspace, federation_file) as ctl:
        job = build_job(config, ctl.federation)
        me = ctl.party.id
        if ctl.party.role == "arbiter" or me not in job.members.parties:
            raise ConfigError(
                f"jobs are proposed by a party with data in them; '{me}' is not one in this job"
            )
        partners = [p for p in job.members.parties if p != me]
        listen, address = own_inbox(ctl.party, ctl.federation)  # before any partner starts a worker
        source = Path(data) if data is not None else ctl.party.data
        ids = count_rows(source) if source is not None else 0
        digest = federation_digest(ctl.federation)
        store = JobStore.for_workspace(workspace)
        try:
            store.propose(config.id, config.kind, me, job_toml, digest)
            ports = _gather_approvals(
                ctl, store, config, job_toml, digest, partners, on_wait, approval_timeout, poll, ids
            )
            addresses = {me: address}
            addresses.update({p: with_port(ctl.federation.get(p).address, ports[p]) for p in partners})
            files = JobFiles.of(workspace, config.id)
            files.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(files.job, job_toml)
            job_federation(ctl.federation, addresses).save(files.federation)
            store.start(config.id, os.getpid())
            for p in partners:
                report = control.start(ctl.session, p, job=config.id, addresses=addresses)
                if report.state != "running":
                    raise ProtocolError(f"party '{p}' did not start job '{config.id}' (it is {report.state})")
        except BaseException as exc:
            _withdraw(ctl, store, config.id, partners, exc)
            raise
    result = run_job(workspace, files, listen=listen, progress=progress, settings=settings, data=data)
    if result["state"] == "failed":  # partners whose workers never heard from us must not wait for us
        with (
            contextlib.suppress(VflError),
            Control.open(workspace, federation_file, connect_deadline=2.0) as again,
        ):
            for p in partners:
                with contextlib.suppress(VflError):
                    control.cancel(
                        again.session, p, job=config.id, reason="the guest's role of the job failed"
                    )
    record = store.get(config.id)
    if not record.final:
        if result["state"] == "completed":
            store.finish(config.id, result["outcome"], result["outputs"])
        elif result["state"] == "cancelled":
            store.cancel(config.id, result["outcome"])
        else:
            store.fail(config.id, result["outcome"])
    store.close()
    if result["state"] == "cancelled":
        raise JobCancelledError(f"job '{config.id}' was cancelled: {result['outcome']}")
    if result["state"] != "completed":
        raise VflError(f"job '{config.id}' failed: {result['outcome']}")
    out = ctl.party.output_dir / config.id
    outputs = {k: Path(p) for k, p in result.get("named_outputs", {}).items()}
    return RunOutcome(
        ctl.party.id, ctl.party.role, config.id, config.kind, out, outputs, result.get("summary", {})
    )


def _gather_approvals(
    ctl: Control,
    store: JobStore,
    config: JobConfig,
    job_toml: str,
    digest: str,
    partners: list[str],
    on_wait: WaitFn | None,
    timeout: float,
    poll: float,
    ids: int,
) -> dict[str, int]:
    ports: dict[str, int] = {}
    waiting: list[str] = []
    for p in partners:
        d = control.propose(
            ctl.session, p, job=config.id, kind=config.kind, job_toml=job_toml, federation=digest, ids=ids
        )
        if d.action == "refuse":
            store.refuse(config.id, f"party '{p}': {d.message}")
            raise ProposalRefusedError(f"party '{p}' refused job '{config.id}': {d.message}")
        ports[p] = d.port
        if d.state != APPROVED:
            waiting.append(p)
            if on_wait:
                on_wait(
                    p, f"waiting for approval at '{p}' ('vfl jobs approve {config.id}' there): {d.message}"
                )
    deadline = time.monotonic() + timeout
    while waiting:
        mine = store.get(config.id)
        if mine.state == CANCELLED:
            raise JobCancelledError(f"job '{config.id}' was cancelled here while it waited for approval")
        for p in list(waiting):
            r = control.status(ctl.session, p, job=config.id)
            if r.state == APPROVED:
                waiting.remove(p)
                ports[p] = r.port or ports[p]
            elif r.state in (REFUSED, CANCELLED, "failed"):
                if r.state == REFUSED:
                    store.refuse(config.id, f"party '{p}': {r.outcome}")
                raise ProposalRefusedError(f"party '{p}' {r.state} job '{config.id}': {r.outcome}")
        if waiting and time.monotonic() > deadline:
            raise TransportError(
                f"job '{config.id}' was not approved within {timeout:g} s at {', '.join(waiting)}"
            )
        if waiting:
            time.sleep(poll)
    store.approve(config.id)
    return ports


def own_inbox(party: PartyConfig, federation: Federation) -> tuple[str, str]:
    """``(listen, address)`` of the proposer's own job inbox: the party's address, or, when its own
    service holds that port, a free job port of that service (``--job-ports``) on the same host."""
    host, port = parse_address(party.listen)
    try:
        check_port_free(party.id, host, port)
        return party.listen, federation.get(party.id).address
    except VflError:
        info = read_service_info(party.workspace)
        if info is None:
            raise
    low, high = info.get("job_ports") or (0, -1)
    job_port = PortPool(host, range(low, high + 1) if high >= low else None).take()
    return with_port(party.listen, job_port), with_port(federation.get(party.id).address, job_port)


def _withdraw(ctl: Control, store: JobStore, job_id: str, partners: list[str], exc: BaseException) -> None:
    """The proposal failed here: cancel it at every partner that recorded it, and here."""
    reason = "the guest withdrew the proposal" if not isinstance(exc, VflError) else str(exc).split(":")[0]
    for p in partners:
        with contextlib.suppress(VflError):
            control.cancel(ctl.session, p, job=job_id, reason=reason)
    with contextlib.suppress(VflError):
        if not store.get(job_id).final:  # a refusal is recorded already
            store.cancel(job_id, reason)
    store.close()


def cancel_job(
    workspace: str | Path, job_id: str, *, reason: str = "cancelled by an operator"
) -> dict[str, str]:
    """Cancel a job here (stopping its worker) and at every other party's service; returns each answer."""
    workspace = Path(workspace)
    store = JobStore.for_workspace(workspace)
    try:
        record = store.get(job_id)
        record = cancel_locally(store, workspace, record, reason)
        answers = {store_party(workspace): record.state}
    finally:
        store.close()
    with Control.open(workspace, connect_deadline=2.0, call_timeout=10.0) as ctl:
        for peer in ctl.channel.peers:
            try:
                answers[peer] = (
                    control.cancel(ctl.session, peer, job=job_id, reason=reason).state or "unknown job"
                )
            except VflError as exc:
                answers[peer] = f"not reached ({exc})"
    return answers


def store_party(workspace: Path) -> str:
    return PartyConfig.load(workspace).id


def service_reports(workspace: str | Path, *, timeout: float = 3.0) -> dict[str, control.Report | str]:
    """Each other party's service status (version, kinds accepted from us), or why it did not answer."""
    out: dict[str, control.Report | str] = {}
    with Control.open(
        workspace, connect_deadline=timeout, call_timeout=timeout, probe_timeout=timeout
    ) as ctl:
        for peer in ctl.channel.peers:
            try:
                out[peer] = control.status(ctl.session, peer)
            except VflError as exc:
                out[peer] = str(exc)
    return out


def score_ids(
    workspace: str | Path,
    ids_file: str | Path,
    *,
    model: str | None = None,
    output: str | Path | None = None,
    job_id: str | None = None,
    progress: ProgressFn | None = None,
    on_wait: WaitFn | None = None,
) -> tuple[Path, RunOutcome]:
    """Score new ids with a served model: a predict job proposed to the hosts' services.

    ``ids_file`` holds the id column, and either the guest's model columns or only ids (then the
    guest's columns come from its own data file). Returns the score file written and the run.
    """
    workspace = Path(workspace)
    party = PartyConfig.load(workspace)
    if party.role != "guest":
        raise ConfigError(f"scoring runs at the guest (it holds the scores); '{party.id}' is a {party.role}")
    model = model or latest_model(party)
    from vfl.data import load_table
    from vfl.model import ModelShard

    shard = ModelShard.load(party.output_dir / model / "model.json")
    ids = load_table(Path(ids_file))
    if party.id_column not in ids.columns:
        raise DataError(f"{ids_file} has no id column '{party.id_column}'")
    needed = shard.scaler().input_names
    if not all(c in ids.columns for c in needed):
        if party.data is None:
            raise ConfigError(f"party '{party.id}' has no data file to take its columns from")
        own = load_table(party.data)
        ids = ids[[party.id_column]].merge(own[[party.id_column, *needed]], on=party.id_column, how="inner")
    job_id = job_id or f"score-{model}-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(2).hex()}"
    files = JobFiles.of(workspace, job_id)
    files.directory.mkdir(parents=True, exist_ok=True)
    data_file = files.directory / "ids.csv"
    ids.to_csv(data_file, index=False)
    job_file = files.directory / "proposal.toml"
    job_file.write_text(JobConfig(id=job_id, kind="predict", predict={"model": model}).to_toml())
    outcome = submit_job(workspace, job_file, data=data_file, progress=progress, on_wait=on_wait)
    scores = party.output_dir / job_id / "scores.csv"
    if output is not None:
        target = Path(output)
        atomic_write_text(target, scores.read_text())
        scores = target
    return scores, outcome


def latest_model(party: PartyConfig) -> str:
    """The most recent training job whose model this guest holds."""
    shards = sorted(party.output_dir.glob("*/model.json"), key=lambda p: p.stat().st_mtime)
    if not shards:
        raise ConfigError(
            f"party '{party.id}' holds no trained model in {party.output_dir}; train one or pass --model"
        )
    return shards[-1].parent.name


__all__ = ["ProposalRefusedError", "cancel_job", "score_ids", "service_reports", "submit_job"]
