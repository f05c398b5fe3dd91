"""The long-running party service behind ``vfl serve`` (DESIGN.md §11, "the party service").

A service keeps the party's mutual-TLS control endpoint up on the party's address
(``vfl.transport.rpc``) and answers the calls of ``protocols/service.py``: a proposal is checked
against the party's policy and its privacy-budget caps and recorded in the job store (accepted,
queued for approval, or refused naming the rule); once the proposer has every partner's approval it
sends ``start`` with every party's job inbox address, and the service starts the job as a **worker
process** (``python -m vfl.parties.worker``) that runs the normal ``run_party`` of ``vfl run`` with
its own Flight channel on its own port. The main loop reaps workers and settles their records from
the result file each worker writes; at start it resumes (``JobStore.recover``) every training job a
dead worker left running, from its checkpoints. SIGTERM stops accepting calls, lets running
workers finish for ``grace`` seconds, then stops them (their checkpoints stay; the next start
resumes them).

Files of the service, under the workspace: ``jobs.db`` (the store), ``logs/`` (rotating service
log, one log per job), ``service/service.json`` (pid, address, health URL), and per job
``service/jobs/<id>/`` (job.toml, the job's federation with job inbox addresses, its port, the
worker's result). Those job files, ``run_job`` and ``cancel_locally`` live in
``vfl.parties.service_jobs`` (re-exported here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vfl import __version__
from vfl.config import JOB_KINDS, Federation, PartyConfig
from vfl.errors import ConfigError, ProtocolError
from vfl.io import atomic_write_json, atomic_write_text
from vfl.parties.common import RowLimit
from vfl.parties.network import load_party_identity, to_peers, verify_membership
from vfl.parties.runner import federation_digest
from vfl.parties.service_jobs import (  # noqa: F401 - re-exported
    JOB_OUTPUTS,
    SERVICE_DIR,
    JobFiles,
    PortPool,
    cancel_locally,
    count_rows,
    job_epsilon,
    job_federation,
    members_of,
    offered_columns,
    remove_partial_outputs,
    run_job,
    service_info_path,
    with_port,
)
from vfl.parties.service_proposals import Proposal, check_proposal, public_reason
from vfl.protocols import service as control
from vfl.protocols.session import Session
from vfl.service.health import HealthStatus, start_health_server
from vfl.service.logs import add_service_log, job_log_path, remove_handlers
from vfl.service.policy import Policy
from vfl.service.store import (
    APPROVED,
    AWAITING_APPROVAL,
    CANCELLED,
    REFUSED,
    RESUMABLE_KINDS,
    RUNNING,
    DuplicateJobError,
    JobRecord,
    JobStateError,
    JobStore,
    UnknownJobError,
    process_alive,
)
from vfl.transport.address import format_address, parse_address
from vfl.transport.rpc import SERVICE_JOB, AnswerChannel, CallRejection, RpcServer

log = logging.getLogger(__name__)

# ---- the service ---------------------------------------------------------------------------------


class PartyService:
    """One party's service: control endpoint, policy, job store, workers."""

    def __init__(
        self,
        workspace: str | Path,
        *,
        federation_file: str | Path | None = None,
        job_ports: range | None = None,
        health_port: int | None = None,
        grace: float = 30.0,
        poll: float = 0.2,
        warm: bool = True,
        models_kept: int = 4,
    ) -> None:
        self.workspace = Path(workspace)
        self.party = PartyConfig.load(self.workspace)
        self.federation_file = Path(federation_file or self.workspace / "federation.toml")
        self.federation = Federation.load(self.federation_file)
        self.identity = load_party_identity(self.party)
        self.card = verify_membership(self.party, self.federation, self.identity, str(self.federation_file))
        self.members = members_of(self.federation)
        self.policy = Policy.load(self.workspace, [c.id for c in self.federation.parties], self.party.id)
        self.columns = offered_columns(self.party)
        self.digest = federation_digest(self.federation)
        self.store = JobStore.for_workspace(self.workspace)
        host, _ = parse_address(self.party.listen)
        self.ports = PortPool(host, job_ports)
        self.health_port = health_port
        self.grace = grace
        self.poll = poll
        self.workers: dict[str, subprocess.Popen] = {}
        self.warm = warm
        self.worker = [sys.executable, "-m", "vfl.parties.worker", "--models", str(models_kept)]
        self._spare: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.backend = control.Backend(self.propose, self.start_job, self.cancel, self.status)
        self.server: RpcServer | None = None
        self.started = time.monotonic()
        self._rows: tuple[tuple[str, int], int] | None = None

    # ---- calls

    def handle(self, sender: str, tag: str, payload: bytes) -> tuple[str, bytes]:
        channel = AnswerChannel(self.party.id, sender, tag, payload)
        control.answer(Session(channel, self.members, job_id=SERVICE_JOB), sender, tag, self.backend)
        assert channel.answer is not None
        return channel.answer

    def _decision(
        self, job: str, action: str, rule: str, message: str, state: str, port: int = 0
    ) -> control.Decision:
        return control.Decision(self.party.id, job, action, rule, message, state, port)

    def propose(
        self, sender: str, job_id: str, kind: str, job_toml: str, digest: str, version: str, rows: int = 0
    ) -> control.Decision:
        with self._lock:
            try:
                existing = self.store.get(job_id)
            except UnknownJobError:
                existing = None
            if existing is not None:
                if existing.proposer == sender and existing.job_toml == job_toml:
                    return self._decision(
                        job_id,
                        _action_of(existing),
                        "",
                        existing.outcome,
                        existing.state,
                        self._port_of(job_id),
                    )
                return self._decision(
                    job_id, "refuse", "job id",
                    f"job '{job_id}' exists already at '{self.party.id}' (state {existing.state}); a job id is used once: pick another",
                    existing.state,
                )  # fmt: skip
            verdict = check_proposal(self, Proposal(sender, job_id, kind, job_toml, digest, rows))
            try:
                self.store.propose(job_id, kind, sender, job_toml, digest)
            except DuplicateJobError as exc:  # another call won the race
                return self._decision(job_id, "refuse", "job id", str(exc), "")
            if verdict.refusal is not None:
                rule, message = verdict.refusal
                self.store.refuse(job_id, message)
                log.warning("refused job %s from '%s': %s", job_id, sender, message)
                return self._decision(job_id, "refuse", rule, public_reason(rule, message, kind), REFUSED)
            files = JobFiles.of(self.workspace, job_id)
            files.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(files.job, job_toml)
            port = self.ports.take()
            atomic_write_text(files.listen_file, format_address(self.ports.host, port))
            decided = verdict.decision
            assert decided is not None
            if verdict.rows is not None:
                self.store.set_rows(job_id, verdict.rows)
                files.write_row_limit(RowLimit(sender, verdict.rows))
            record = self.store.approve(job_id) if decided.accepted else self.store.queue(job_id)
            log.info("job %s from '%s': %s", job_id, sender, decided.message)
            return self._decision(job_id, decided.action, decided.rule, decided.message, record.state, port)

    def _port_of(self, job_id: str) -> int:
        try:
            return parse_address(JobFiles.of(self.workspace, job_id).listen())[1]
        except (OSError, ConfigError):
            return 0

    def _report(self, record: JobRecord | None, job_id: str, sender: str) -> control.Report:
        kinds = self.accepted_kinds(sender)
        if record is None:
            return control.Report(self.party.id, job_id, "", "", __version__, kinds, 0)
        return control.Report(
            self.party.id, job_id, record.state, record.outcome, __version__, kinds, self._port_of(job_id)
        )

    def data_rows(self) -> int | None:
        """How many rows our data file has (None: no data, the arbiter); read once per data file."""
        if self.party.role == "arbiter" or self.party.data is None:
            return None
        try:
            stamp = (str(self.party.data), self.party.data.stat().st_mtime_ns)
        except OSError as exc:
            raise ConfigError(f"data file {self.party.data} cannot be read: {exc}") from exc
        if self._rows is None or self._rows[0] != stamp:
            self._rows = (stamp, count_rows(self.party.data))
        return self._rows[1]

    def reload_policy(self) -> None:
        """Read the policy again (an edited policy.toml applies to the next proposal; a broken one is kept out)."""
        try:
            self.policy = Policy.load(self.workspace, [c.id for c in self.federation.parties], self.party.id)
        except ConfigError as exc:
            log.error("policy not reloaded, the previous one stays in force: %s", exc)

    def accepted_kinds(self, sender: str) -> dict[str, str]:
        self.reload_policy()
        out = {}
        for kind in JOB_KINDS:
            d = self.policy.check(sender, kind, self.columns, {})
            if not d.refused:
                out[kind] = "auto" if d.accepted else "manual"
        return out

    def start_job(self, sender: str, job_id: str, addresses: dict[str, str]) -> control.Report:
        with self._lock:
            record = self.store.get(job_id)
            if record.proposer != sender:
                raise ProtocolError(f"job '{job_id}' was proposed by '{record.proposer}', not '{sender}'")
            if record.state != APPROVED:
                return self._report(record, job_id, sender)
            files = JobFiles.of(self.workspace, job_id)
            mine = addresses.get(self.party.id)
            port = self._port_of(job_id)
            if mine is None or parse_address(mine)[1] != port:
                raise ProtocolError(
                    f"the start of job '{job_id}' gives '{self.party.id}' another port than {port}"
                )
            job_federation(self.federation, addresses).save(files.federation)
            record = self._spawn(job_id)
            return self._report(record, job_id, sender)

    def cancel(self, sender: str, job_id: str, reason: str) -> control.Report:
        try:
            record = self.store.get(job_id)
        except UnknownJobError:
            return self._report(None, job_id, sender)
        record = cancel_locally(self.store, self.workspace, record, f"cancelled by '{sender}': {reason}")
        return self._report(record, job_id, sender)

    def status(self, sender: str, job_id: str) -> control.Report:
        record = None
        if job_id:
            with contextlib.suppress(UnknownJobError):
                record = self.store.get(job_id)
        return self._report(record, job_id, sender)

    # ---- workers

    def _start_spare(self) -> None:
        """One warm worker, imported and waiting for a job id (``vfl.parties.worker --warm``)."""
        if self._stop.is_set() or not self.warm:
            return
        path = self.workspace / "logs" / "workers.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            self._spare = subprocess.Popen(
                [*self.worker, "--warm", str(self.workspace)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, text=True,
            )  # fmt: skip

    def _take_spare(self, job_id: str) -> subprocess.Popen | None:
        proc, self._spare = self._spare, None
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return None
        try:
            proc.stdin.write(job_id + "\n")
            proc.stdin.close()
        except OSError:
            return None
        return proc

    def _drop_spare(self) -> None:
        proc, self._spare = self._spare, None
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # it reads an empty line and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def _spawn(self, job_id: str) -> JobRecord:
        files = JobFiles.of(self.workspace, job_id)
        with contextlib.suppress(FileNotFoundError):
            files.result.unlink()
        log_path = job_log_path(self.workspace, job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = self._take_spare(job_id)
        if proc is None:
            with log_path.open("a") as out:
                proc = subprocess.Popen(
                    [*self.worker, str(self.workspace), job_id],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
        self._start_spare()
        self.workers[job_id] = proc
        log.info("job %s started in worker %d", job_id, proc.pid)
        return self.store.start(job_id, proc.pid)

    def _settle(self, job_id: str, exit_code: int | None) -> None:
        files = JobFiles.of(self.workspace, job_id)
        result = files.read_result()
        try:
            record = self.store.get(job_id)
        except UnknownJobError:
            return
        with contextlib.suppress(ConfigError):
            self.ports.release(self._port_of(job_id))
        if record.final:
            if record.state == CANCELLED:
                remove_partial_outputs(self.party.output_dir / job_id)
            return
        try:
            if result is None:
                if self._stop.is_set() and record.kind == "train":
                    return  # stopped by our own shutdown: the next start resumes it
                self.store.fail(job_id, f"its worker stopped (exit code {exit_code}) without a result")
            elif result["state"] == "completed":
                self.store.finish(job_id, result["outcome"], result["outputs"])
                self._charge_rows(record, result.get("summary", {}).get("intersection"))
                if record.kind == "train" and self._spare is not None:  # a new model: load it in advance
                    self._drop_spare()
                    self._start_spare()
            elif result["state"] == "cancelled":
                self.store.cancel(job_id, result["outcome"])
            else:
                self.store.fail(job_id, result["outcome"])
        except JobStateError as exc:
            log.info("job %s: %s", job_id, exc)
        log.info("job %s is %s", job_id, self.store.get(job_id).state)

    def _charge_rows(self, record: JobRecord, used: object) -> None:
        """A completed job is charged the rows it used (its intersection) instead of its bound."""
        if not isinstance(used, int):
            return
        if record.rows is not None and used > record.rows:
            log.warning(
                "job %s used %d rows, more than the %d it was accepted for", record.id, used, record.rows
            )
        self.store.set_rows(record.id, used)

    def _reap(self) -> None:
        with self._lock:
            for job_id, proc in list(self.workers.items()):
                code = proc.poll()
                if code is not None:
                    del self.workers[job_id]
                    self._settle(job_id, code)
            # workers left by a service that died: watch them until they end
            for record in self.store.list([RUNNING]):
                if record.id in self.workers or record.resume:
                    continue
                if record.pid is None or not process_alive(record.pid, record.pid_token):
                    self._orphan_ended(record)

    def _orphan_ended(self, record: JobRecord) -> None:
        """A worker left by a service that died has ended: a resumable job it left without a result
        resumes from its checkpoints (the worker may still have been exiting when this service
        started, so ``recover`` saw it alive); any other job is settled by its result."""
        if record.kind in RESUMABLE_KINDS and JobFiles.of(self.workspace, record.id).read_result() is None:
            self.store.recover()
            log.info("job %s: its worker ended without a result; it resumes from its checkpoints", record.id)
            self._spawn(record.id)
            return
        self._settle(record.id, None)

    def _resume_recovered(self) -> None:
        for record in self.store.recover():
            log.info("job %s: %s", record.id, record.outcome)
        for record in self.store.list([RUNNING]):
            if record.resume:
                files = JobFiles.of(self.workspace, record.id)
                if not files.federation.exists():
                    self.store.fail(record.id, "its job files are gone; run it again")
                    continue
                self.ports.keep(self._port_of(record.id))
                log.info("job %s resumes from its checkpoints", record.id)
                self._spawn(record.id)
            elif record.pid is not None:
                self.ports.keep(self._port_of(record.id))
        for record in self.store.list([APPROVED, AWAITING_APPROVAL]):
            self.ports.keep(self._port_of(record.id))

    def _record_refused_call(self, r: CallRejection) -> None:
        """A call refused before any other work: kept in the store (``vfl jobs refused``) and the log."""
        log.warning(
            "refused a call claimed from '%s' (%s), certificate %s: %s",
            r.claimed_sender, r.tag, r.fingerprint or "(none)", r.reason,
        )  # fmt: skip
        self.store.record_refused_call(r.claimed_sender, r.tag, r.fingerprint, r.reason)

    # ---- running

    def health(self) -> HealthStatus:
        return HealthStatus(True, len(self.store.list([RUNNING])))

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        """Run until ``stop()`` (or SIGTERM / SIGINT when called in the main thread)."""
        root = logging.getLogger("vfl")
        handlers = add_service_log(root, self.workspace)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        health = None
        try:
            self._resume_recovered()
            self.server = RpcServer(
                self.identity, to_peers(self.federation), self.party.listen, self.handle,
                on_reject=self._record_refused_call,
            )  # fmt: skip
            health = start_health_server(self.health_port, self.health, started=self.started)
            atomic_write_json(
                service_info_path(self.workspace),
                {
                    "pid": os.getpid(), "party": self.party.id, "address": self.server.address,
                    "health": health.url if health else None, "version": __version__,
                    "job_ports": [self.ports.ports.start, self.ports.ports.stop - 1] if self.ports.ports else None,
                },
            )  # fmt: skip
            with self._lock:
                self._start_spare()
            log.info("party '%s' serving on %s (vfl %s)", self.party.id, self.server.address, __version__)
            while not self._stop.wait(self.poll):
                self._reap()
            log.info(
                "stopping: no new calls; waiting up to %g s for %d job(s)", self.grace, len(self.workers)
            )
        finally:
            if self.server is not None:
                with contextlib.suppress(Exception):
                    self.server.shutdown()
            with self._lock:
                self._drop_spare()
            deadline = time.monotonic() + self.grace
            while self.workers and time.monotonic() < deadline:
                self._reap()
                time.sleep(self.poll)
            for job_id, proc in list(self.workers.items()):
                log.warning(
                    "job %s still runs after %g s: stopped; it resumes when the service starts",
                    job_id,
                    self.grace,
                )
                proc.kill()
                proc.wait()
            self._reap()
            if health is not None:
                health.close()
            service_info_path(self.workspace).unlink(missing_ok=True)
            self.store.close()
            log.info("party '%s' service stopped", self.party.id)
            remove_handlers(root, handlers)


def _action_of(record: JobRecord) -> str:
    if record.state == REFUSED:
        return "refuse"
    if record.state == AWAITING_APPROVAL:
        return "queue"
    return "accept"


__all__ = ["JobFiles", "PartyService", "cancel_locally", "job_federation", "run_job"]
