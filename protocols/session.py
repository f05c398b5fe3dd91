"""The session layer every protocol runs on: who takes part, checked messages, agreement, keys,
generations after a restart, barriers and abort notices (DESIGN.md §10, §12).

A ``Session`` wraps one party's ``Channel`` for one job. Protocols send and receive only declared
messages through it (``send`` / ``recv`` check roles and fields against the declaration), so the
transcript of any job can be matched message by message to the tables in ``protocols/``.

Message table of the session itself (``SESSION``):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``session.agree`` | every party -> every other | digest and JSON of the shared settings, a summary of saved state | the settings (identical at every party) and whether the peer can resume |
| ``session.public-key`` | key owner -> parties | a Paillier public key | the key |
| ``session.state`` | party -> coordinator | the epochs it saved, its options digest, its row count | where the party can resume from |
| ``session.resume`` | coordinator -> parties | ok, a reason, the epoch to resume from | the epoch everyone resumes from |
| ``session.done`` | party -> party | that a step completed | that the peer completed it |

Recovery (DESIGN.md §12): a party restarted with saved state sends a ``rejoin`` notice to the
*coordinator* (the party that decides epochs: the arbiter in coordinated training). The
coordinator opens a new generation: it interrupts every party with a ``resync`` notice, collects
each one's ``session.state``, answers ``session.resume`` with the latest epoch every party has, and
the protocol's ``on_resume`` hook hands out fresh keys. Every tag a protocol builds after that
carries the generation, so nothing sent before the fault is mistaken for something after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import pyarrow as pa

from vfl.errors import (
    ConfigError,
    DisagreementError,
    PeerAbortedError,
    PeerTimeoutError,
    ProtocolError,
    TransportError,
    VflError,
    abort_code,
)
from vfl.protocols.messages import ANY_ROLE, BOOL, FIXED, INT, TEXT, Message, Protocol, message, one
from vfl.transport.channel import Channel, Interrupted

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "vfl/2"
REJOIN_WAIT = 300.0  # seconds a party waits for a lost peer to come back before giving up
FIRST_CONTACT = 600.0  # seconds a party waits for every other party to start (the agreement)


def _session_message(name: str, tag: str, learns: str, **kinds: Any) -> Message:
    """A message of the session layer: one row, from any role of the job to any other."""
    return message(name, tag, ANY_ROLE, ANY_ROLE, learns, rows=1, **kinds)


SESSION = Protocol(
    "session",
    (
        _session_message(
            "session.agree", "session/agree",
            "the shared job settings (identical at every party) and whether each peer has saved state to resume",
            digest=TEXT, settings=TEXT, state=TEXT,
        ),
        _session_message(
            "session.public-key", "session/g{gen}/public-key/{owner}", "a Paillier public key", n=FIXED, h_s=FIXED
        ),
        _session_message(
            "session.state", "session/g{gen}/state",
            "the epochs a party saved (for resuming), its options digest and its row count",
            latest=INT, earliest=INT, digest=TEXT, n_rows=INT,
        ),
        _session_message(
            "session.resume", "session/g{gen}/resume", "the epoch every party resumes from after a restart",
            ok=BOOL, reason=TEXT, epoch=INT,
        ),
        _session_message(
            "session.done", "session/done/{step}", "that the peer completed a step of the job", ok=BOOL
        ),
    ),
)  # fmt: skip
AGREE, PUBLIC_KEY, STATE, RESUME, DONE = SESSION.messages


@dataclass(frozen=True)
class Members:
    """The parties of one job, by role (at most one guest and one arbiter; hosts in federation order)."""

    guest: str
    hosts: tuple[str, ...]
    arbiter: str | None = None

    def __post_init__(self) -> None:
        names = list(self.parties)
        if len(set(names)) != len(names):
            raise ConfigError(f"every party of a job needs its own id, got {names}")

    @property
    def parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts, *((self.arbiter,) if self.arbiter else ()))

    @property
    def data_parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts)

    def role_of(self, party: str) -> str:
        if party == self.guest:
            return "guest"
        if party in self.hosts:
            return "host"
        if party == self.arbiter:
            return "arbiter"
        raise ConfigError(f"party '{party}' takes no part in this job ({', '.join(self.parties)})")

    def without_arbiter(self) -> Members:
        return Members(self.guest, self.hosts, None)


def settings_digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """``"key (a here, b there)"`` for every setting that differs, sorted by key."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key, "<unset>"), theirs.get(key, "<unset>")
        if json.dumps(a, default=str) != json.dumps(b, default=str):
            out.append(f"{key} ({a} here, {b} there)")
    return out


@dataclass(frozen=True)
class Agreement:
    """The outcome of the agreement: every party runs the same job, and whether all resume from saved state."""

    resume: bool
    note: str = ""


def decide_resume(states: Mapping[str, dict[str, Any] | None]) -> Agreement:
    """All resume when every party has saved state for this job; otherwise all start afresh.

    Training is deterministic from the job seed, so starting afresh gives the same model; resuming
    is only a shortcut, and it needs every party (a party without state cannot rejoin).
    """
    having = sorted(p for p, s in states.items() if s)
    if having and len(having) == len(states):
        return Agreement(True)
    if having:
        missing = sorted(p for p, s in states.items() if not s)
        return Agreement(False, f"saved state at {', '.join(having)} ignored: {', '.join(missing)} have none")
    return Agreement(False)


class Session:
    """One party's view of one job: checked declared messages over its channel, plus shared steps."""

    def __init__(
        self, channel: Channel, members: Members, *, job_id: str, first_contact: float = FIRST_CONTACT
    ) -> None:
        self.channel = channel
        self.first_contact = first_contact  # how long the agreement waits for every other party to start
        self.members = members
        self.job_id = job_id
        self.party = channel.party
        self.role = members.role_of(self.party)
        self.protocols: list[Protocol] = [SESSION]
        self.agreed: Agreement | None = None

    # ---- declared messages

    def uses(self, protocol: Protocol) -> None:
        """Record that this job runs ``protocol`` (its messages then count in this party's ledger)."""
        if protocol not in self.protocols:
            self.protocols.append(protocol)

    def send(self, msg: Message, to: str, table: pa.Table, **params: Any) -> None:
        """Send one declared message; sending an undeclared shape is a bug here, not at the peer."""
        self._check_roles(msg, self.party, to)
        tag = msg.tag(**params)
        msg.check(table, peer=self.party, tag=tag)
        self.channel.send(to, tag, table)

    def broadcast(self, msg: Message, to: Iterable[str], table: pa.Table, **params: Any) -> None:
        for peer in to:
            if peer != self.party:
                self.send(msg, peer, table, **params)

    def recv(self, msg: Message, frm: str, *, timeout: float | None = None, **params: Any) -> pa.Table:
        """Receive one declared message from ``frm``, checked against its declaration."""
        self._check_roles(msg, frm, self.party)
        tag = msg.tag(**params)
        return msg.check(self.channel.recv(frm, tag, timeout), peer=frm, tag=tag)

    def _check_roles(self, msg: Message, sender: str, receiver: str) -> None:
        s, r = self.members.role_of(sender), self.members.role_of(receiver)
        if s not in msg.sender or r not in msg.receiver:
            raise ProtocolError(
                f"message {msg.name} goes from {'/'.join(msg.sender)} to {'/'.join(msg.receiver)}, "
                f"not from {s} '{sender}' to {r} '{receiver}'"
            )

    # ---- agreement

    def agree(
        self,
        settings: Mapping[str, Any],
        *,
        state: dict[str, Any] | None = None,
        rejoin_to: str | None = None,
        timeout: float | None = None,
    ) -> Agreement:
        """Compare the shared settings with every other party before any work (one digest).

        ``state`` summarizes this party's saved state for the job (None: nothing saved); when it
        is given, ``rejoin_to`` (the coordinator) first gets a ``rejoin`` notice, in case the
        others are still running the job and only this party restarted: the coordinator then
        interrupts this wait with a ``resync`` notice (``Interrupted``) instead of agreeing.
        A difference is a ``ConfigError`` naming each differing setting and the peer.
        """
        timeout = self.first_contact if timeout is None else timeout
        shared = {"protocol": PROTOCOL_VERSION, "job_id": self.job_id, **settings}
        others = [p for p in self.members.parties if p != self.party]
        if state and rejoin_to and rejoin_to != self.party:
            self.channel.notify(rejoin_to, "rejoin", {"party": self.party})
        table = pa.table(
            {
                "digest": [settings_digest(shared)],
                "settings": [json.dumps(shared, sort_keys=True, default=str)],
                "state": [json.dumps(state or {}, sort_keys=True)],
            }
        )
        self.broadcast(AGREE, others, table)
        problems = []
        states: dict[str, dict[str, Any] | None] = {self.party: state or None}
        for peer in others:
            try:
                reply = self._recv_agreement(peer, timeout)
            except PeerAbortedError as exc:
                if problems:  # a peer that found the same difference stopped first: report ours
                    break
                if exc.peer_code != "disagreement":
                    raise
                reply = self._late_agreement(peer, exc)  # to name the difference ourselves
            states[peer] = json.loads(one(reply, "state")) or None
            if one(reply, "digest") == settings_digest(shared):
                continue
            try:
                theirs = json.loads(one(reply, "settings"))
            except json.JSONDecodeError as exc:
                raise ProtocolError(f"party '{peer}' sent unreadable job settings") from exc
            problems.append(f"party '{peer}' differs in {', '.join(differences(shared, theirs))}")
        if problems:
            raise DisagreementError(
                f"the parties run different versions of job '{self.job_id}': {'; '.join(problems)}; "
                "every party must run the same job.toml and federation.toml"
            )
        self.agreed = decide_resume(states)
        if self.agreed.note:
            log.warning("job %s starts afresh: %s", self.job_id, self.agreed.note)
        return self.agreed

    def _late_agreement(self, peer: str, exc: PeerAbortedError, wait: float = 5.0) -> pa.Table:
        """A peer stopped because the settings differ: its agreement may still be on its way."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                return self.recv(AGREE, peer, timeout=0.1)
            except PeerAbortedError:
                time.sleep(0.1)
        raise exc

    def _recv_agreement(self, peer: str, timeout: float) -> pa.Table:
        while True:
            try:
                return self.recv(AGREE, peer, timeout=timeout)
            except Interrupted as exc:
                if exc.notice.kind != "rejoin":
                    raise
                # A peer restarted with saved state while we are starting too: its agreement follows.
                log.info("party '%s' rejoined while the job starts", exc.notice.sender)

    # ---- keys

    def hand_out_key(self, public_key: Any, to: Iterable[str], *, generation: int = 0) -> None:
        self.broadcast(PUBLIC_KEY, to, public_key.to_arrow(), gen=generation, owner=self.party)

    def receive_key(self, owner: str, *, generation: int = 0) -> Any:
        from vfl.crypto import PublicKey

        table = self.recv(PUBLIC_KEY, owner, gen=generation, owner=owner)
        try:
            return PublicKey.from_arrow(table)
        except VflError as exc:
            raise ProtocolError(f"party '{owner}' sent an unusable public key: {exc}") from exc

    # ---- barriers and failure

    def barrier(
        self, step: str, parties: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> None:
        """Every party of ``parties`` (default: all) tells every other it completed ``step`` and waits for them.

        No party reports success unless all completed: a party that failed sent an abort instead,
        which ends the wait with that party's reason code.
        """
        among = [p for p in (parties or self.members.parties) if p != self.party]
        self.broadcast(DONE, among, pa.table({"ok": [True]}), step=step)
        for peer in among:
            self.recv(DONE, peer, step=step, timeout=timeout)

    def report_done(self, step: str, to: str) -> None:
        self.send(DONE, to, pa.table({"ok": [True]}), step=step)

    def await_done(self, step: str, frm: str, *, timeout: float | None = None) -> None:
        self.recv(DONE, frm, step=step, timeout=timeout)

    def abort(self, exc: BaseException) -> None:
        """Tell every other party that this one stopped, with the reason code of ``exc`` only."""
        self.channel.notify_abort(list(self.members.parties), abort_code(exc))

    def guard(self, action: Callable[[], Any]) -> Any:
        """Run a step; if it fails, tell every other party (by code) before raising, so nobody waits in vain."""
        try:
            return action()
        except BaseException as exc:
            # A peer's abort was already sent to every party by that peer: passing it on would only
            # race with the original (and could reach a party first, with the wrong code).
            relayed = isinstance(exc, PeerAbortedError)
            if not relayed and (
                not isinstance(exc, (TransportError, Interrupted)) or isinstance(exc, PeerTimeoutError)
            ):
                self.abort(exc)
            raise


@dataclass
class EpochState:
    """What any resumable protocol keeps per completed epoch (the protocol's own payload in ``data``)."""

    epoch: int
    data: dict[str, Any]


@dataclass(eq=False)
class Generations:
    """The generation machinery of a resumable protocol: rejoin, resync, resume (DESIGN.md §12).

    Parties keep the states of their last epochs (``epochs``: epoch -> anything). The coordinator
    calls ``resync``; every other party calls ``answer`` when a ``resync`` notice interrupts it, or
    ``wait`` when it lost a peer or restarted. ``on_resume(generation)`` runs at every party once a
    generation is agreed (the protocol hands out fresh keys there).
    """

    session: Session
    coordinator: str
    _: KW_ONLY
    digest: str
    n_rows: int
    on_resume: Callable[[int], None]
    generation: int = field(default=0, init=False)

    @property
    def participants(self) -> list[str]:
        return [p for p in self.session.members.parties if p != self.coordinator]

    # ---- participants

    def rejoin(self, epochs: Iterable[int]) -> int:
        """A restarted party: ask the coordinator to resynchronize, then resume (returns the epoch)."""
        self.session.channel.notify(self.coordinator, "rejoin", {"party": self.session.party})
        return self.wait(epochs)

    def wait(self, epochs: Iterable[int], error: BaseException | None = None) -> int:
        """Wait for the coordinator's ``resync`` notice (a peer restarts), then resume from it."""
        if error is not None:
            log.warning("%s; waiting up to %.0f s for the party to come back", error, REJOIN_WAIT)
        try:
            self.session.channel.recv(self.coordinator, "vfl/never", timeout=REJOIN_WAIT)
        except Interrupted as exc:
            return self.answer(exc, epochs)
        if error is not None:
            raise error
        raise ProtocolError(f"the coordinator '{self.coordinator}' did not start a resynchronization")

    def answer(self, exc: Interrupted, epochs: Iterable[int]) -> int:
        """Answer a ``resync`` notice: report our saved epochs, get the epoch everyone resumes from."""
        kept = sorted(epochs)
        while True:
            notice = exc.notice
            if notice.kind != "resync" or notice.sender != self.coordinator:
                raise ProtocolError(f"unexpected '{notice.kind}' notice from '{notice.sender}'")
            try:
                gen = int(notice.data["generation"])
            except (KeyError, ValueError) as bad:
                raise ProtocolError(
                    f"party '{notice.sender}' sent a resync notice without a generation"
                ) from bad
            try:
                return self._resume(gen, kept)
            except Interrupted as again:
                exc = again

    def _resume(self, gen: int, kept: list[int]) -> int:
        s = self.session
        table = pa.table(
            {
                "latest": [kept[-1] if kept else -1],
                "earliest": [kept[0] if kept else -1],
                "digest": [self.digest],
                "n_rows": [self.n_rows],
            }
        )
        s.send(STATE, self.coordinator, table, gen=gen)
        reply = s.recv(RESUME, self.coordinator, gen=gen)
        if not one(reply, "ok"):
            raise ProtocolError(one(reply, "reason"))
        epoch = int(one(reply, "epoch"))
        if epoch not in kept:
            raise ProtocolError(f"the coordinator resumes from epoch {epoch}, which this party did not keep")
        self.generation = gen
        self.on_resume(gen)
        log.info("party '%s' resumes after epoch %d (generation %d)", s.party, epoch, gen)
        return epoch

    # ---- the coordinator

    def resync(self, own_epochs: Iterable[int]) -> int:
        """Open a new generation: every party reports its epochs, all resume from the latest shared one."""
        s = self.session
        gen = self.generation + 1
        while True:
            for p in self.participants:
                s.channel.notify(p, "resync", {"generation": str(gen)})
            try:
                reports = {p: s.recv(STATE, p, gen=gen) for p in self.participants}
                break
            except Interrupted as exc:
                if exc.notice.kind != "rejoin":
                    raise
                gen += 1  # another party restarted meanwhile: start over with a newer generation
        own = sorted(own_epochs)
        latest = {p: int(one(t, "latest")) for p, t in reports.items()}
        earliest = {p: int(one(t, "earliest")) for p, t in reports.items()}
        epoch = min([*latest.values(), own[-1] if own else -1])
        reason = None
        if any(one(t, "digest") != self.digest for t in reports.values()):
            reason = "a party resumed with different job options; every party must run the same job.toml"
        elif any(v < 0 for v in latest.values()) or not own:
            lacking = sorted(p for p, v in latest.items() if v < 0) or [s.party]
            reason = (
                f"{', '.join(lacking)} kept no state of this job while the others did; "
                "run the job again with 'vfl run --restart' at every party"
            )
        elif max([*earliest.values(), own[0]]) > epoch or epoch not in own:
            reason = (
                f"the parties' saved epochs do not overlap ({latest}); "
                "run the job again with 'vfl run --restart' at every party"
            )
        result = pa.table({"ok": [reason is None], "reason": [reason or ""], "epoch": [max(epoch, 0)]})
        s.broadcast(RESUME, self.participants, result, gen=gen)
        if reason is not None:
            raise ProtocolError(reason)
        self.generation = gen
        self.on_resume(gen)
        log.info("generation %d resumes after epoch %d (parties were at %s)", gen, epoch, latest)
        return epoch


__all__ = [
    "SESSION",
    "Agreement",
    "EpochState",
    "Generations",
    "Members",
    "Session",
    "decide_resume",
    "differences",
    "settings_digest",
]
