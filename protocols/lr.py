"""Coordinated vertical logistic regression (DESIGN.md §6): Hardy et al. 2017 with masks.

One function per role, speaking only through a ``Channel``. Per mini-batch ``B`` of ``m`` rows, with
``s = 2y - 1`` and ``[[.]]`` Paillier encryption under the arbiter's key:

1. each host sends ``[[u_k]] = [[X_k[B] w_k]]`` to the guest;
2. the guest forms ``[[4d]] = sum_k [[u_k]] + (u_g - 2s)`` (the Taylor residual ``d = z/4 - s/2``
   scaled by 4, so no division happens under encryption), re-randomizes it and sends it to every host;
3. every data party computes ``[[X_p[B]^T 4d]]`` by multi-exponentiation, masks every value with
   fresh uniform randomness 40+ bits wider than the value, packs, and sends it to the arbiter;
4. the arbiter decrypts the masked slots and returns them; the party unmasks and divides by ``4m``;
5. every party steps its own optimizer on its own weights.

The loss needs no cross-host product: each host also sends ``[[w_k . g_k]] = [[u_k . 4d]]`` from its
encrypted gradient, and the guest computes, from ``[[u_k]]`` alone, ``[[u_k . u_g]]`` and
``[[u_k . s]]``. With ``z = u_g + sum_k u_k`` the batch's Taylor loss is ``m log 2 + Q / 8`` where
``Q = sum z^2 - 4 s.z = |u_g|^2 - 4 s.u_g + sum_k ([[u_k.u_g]] + [[w_k.g_k]] - 2 [[s.u_k]])``. The
guest adds ``[[Q]]`` over the epoch; the arbiter decrypts that one number, decides whether to stop
and tells everyone. The arbiter never sees a gradient, weight, per-row value or label.

Faults: every party keeps its state at the last epoch boundaries (``PartyState`` / ``ArbiterState``;
the party runtime also saves them to disk). A restarted party sends a ``rejoin`` notice to the
arbiter; the arbiter starts a new *generation*: it interrupts every data party with a ``resync``
notice, collects the epoch each one last completed, hands out a fresh public key, and everyone
continues from the last epoch all parties completed, with the generation in every message tag so
nothing from before the fault is taken for something after it. Training is deterministic given
that state, so the resumed model equals the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from vfl.crypto import (
    EncryptedVector,
    PackedCiphertexts,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    WorkerPool,
    decrypt,
    decrypt_packed,
    encrypt,
    generate_keypair,
    ints_from_arrow,
    ints_to_arrow,
    mask_and_pack,
    prepare_matrix,
)
from vfl.errors import ConfigError, PeerTimeoutError, ProtocolError, TransportError
from vfl.optim import EarlyStopping, ShardOptimizer, epoch_batches, initial_weights
from vfl.options import TrainOptions
from vfl.transport import Channel
from vfl.transport.channel import Interrupted

log = logging.getLogger(__name__)

# A priori bound on |z| (the joint logit) used to size the gradient masks: masks are 40 bits wider
# than the largest gradient this bound allows, so even a logit 2**10 times larger keeps 30 bits of
# statistical hiding. Logits of standardized, clipped data stay far below it.
LOGIT_BOUND = 2.0**16
MASK_BITS = 40
KEEP_STATES = 3  # epoch boundaries a party keeps, so it can roll back to where the slowest party is
REJOIN_WAIT = 300.0  # seconds a party waits for a lost peer to come back before giving up

Progress = Callable[[int, int, float | None], None]  # (epoch, batches done in epoch, loss or None)


@dataclass(frozen=True)
class LrPlan:
    """The parties of one training job and its shared options."""

    job_id: str
    guest: str
    hosts: tuple[str, ...]
    arbiter: str
    options: TrainOptions

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("training needs at least one host")

    @property
    def data_parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts)


@dataclass
class PartyState:
    """A data party's training state after ``epoch`` completed epochs: enough to resume from there."""

    epoch: int
    weights: np.ndarray
    optimizer: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "weights": self.weights.tolist(),
            "optimizer": self.optimizer,
            "losses": self.losses,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartyState:
        return cls(
            int(data["epoch"]),
            np.asarray(data["weights"], dtype=float),
            dict(data["optimizer"]),
            [float(x) for x in data["losses"]],
            bool(data["stopped"]),
        )


@dataclass
class ArbiterState:
    """The arbiter's state after ``epoch`` completed epochs: the loss history and the generation."""

    epoch: int
    losses: list[float]
    generation: int
    n_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "losses": self.losses,
            "generation": self.generation,
            "n_rows": self.n_rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArbiterState:
        return cls(
            int(data["epoch"]),
            [float(x) for x in data["losses"]],
            int(data["generation"]),
            int(data["n_rows"]),
        )


@dataclass
class TrainedShard:
    """What training leaves at a data party: its own weights and how training went."""

    weights: np.ndarray
    epochs: int
    losses: list[float] = field(default_factory=list)  # known at the guest (and the arbiter) only
    stopped_early: bool = False
    generations: int = 1


@dataclass
class ArbiterSummary:
    """What the arbiter learned: the loss per epoch, and nothing per row."""

    losses: list[float]
    epochs: int
    stopped_early: bool
    public_key_fingerprint: str
    generations: int = 1


def _tag(gen: int, epoch: int, batch: int, what: str) -> str:
    return f"lr/g{gen}/e{epoch}/b{batch}/{what}"


def _check_batch_size(options: TrainOptions, n_rows: int, n_columns: int, party: str) -> str | None:
    batch = min(options.batch_size or n_rows, n_rows)
    need = options.min_rows_per_column * n_columns
    if batch <= need:
        return (
            f"batch size {batch} is too small for party '{party}' with {n_columns} columns: a party that sees its "
            f"gradient on so few rows could solve for the residuals; use a batch size above {need}"
        )
    return None


def _hello_table(plan: LrPlan, n_rows: int, problem: str | None) -> pa.Table:
    return pa.table(
        {
            "options": [json.dumps(plan.options.to_dict(), sort_keys=True)],
            "digest": [plan.options.digest()],
            "job_id": [plan.job_id],
            "n_rows": [n_rows],
            "problem": [problem or ""],
        }
    )


# --- data parties ----------------------------------------------------------------------------------


class _DataParty:
    """What the guest and the hosts share: setup, (re)synchronization, masked decryption, state."""

    def __init__(
        self,
        channel: Channel,
        plan: LrPlan,
        features: np.ndarray,
        *,
        intercept: bool,
        workers: WorkerPool | None,
        resume: list[PartyState] | None,
        on_epoch: Callable[[PartyState], None] | None,
    ) -> None:
        self.channel, self.plan, self.workers, self.on_epoch = channel, plan, workers, on_epoch
        self.n, self.k = features.shape
        self.matrix = prepare_matrix(features, workers=workers)
        self.xq = self.matrix.dequantized  # the matrix the encrypted products really use
        self.intercept = intercept
        self.states: dict[int, PartyState] = {s.epoch: s for s in resume or []}
        self.generation = 0
        self.public_key: PublicKey | None = None
        self.randomness: RandomnessPool | None = None

    # setup and resynchronization
    def start(self) -> PartyState:
        """Fresh start: the hello handshake. Restart: ask the arbiter to resynchronize everyone."""
        if self.states:
            self.channel.notify(self.plan.arbiter, "rejoin", {"party": self.channel.party})
            return self._wait_for_resync()
        problem = _check_batch_size(self.plan.options, self.n, self.k, self.channel.party)
        self.channel.send(self.plan.arbiter, "lr/hello", _hello_table(self.plan, self.n, problem))
        if problem:
            raise ConfigError(problem)  # our own option is wrong; the arbiter tells the others
        status = self.channel.recv(self.plan.arbiter, "lr/status")
        if not status["ok"][0].as_py():
            raise ProtocolError(status["reason"][0].as_py())
        self._use_key(PublicKey.from_arrow(self.channel.recv(self.plan.arbiter, "lr/public-key")))
        o = self.plan.options
        optimizer = ShardOptimizer(o, self.k, 0 if self.intercept else None)
        first = PartyState(0, initial_weights(self.k, o, self.channel.party), optimizer.state())
        self._keep(first)
        return first

    def _use_key(self, public_key: PublicKey) -> None:
        self.public_key = public_key
        self.randomness = RandomnessPool(public_key, self.workers)
        if self.workers is not None:
            self.workers.warm_up(public_key)
        self.randomness.fill(min(self.plan.options.batch_size or self.n, self.n) + self.k + 4)

    def _keep(self, state: PartyState) -> None:
        self.states[state.epoch] = state
        for old in sorted(self.states)[:-KEEP_STATES]:
            del self.states[old]
        if self.on_epoch is not None:
            self.on_epoch(state)

    def _wait_for_resync(self) -> PartyState:
        """Block until the arbiter's ``resync`` notice, then synchronize (peers may be restarting)."""
        try:
            self.channel.recv(self.plan.arbiter, "lr/never", timeout=REJOIN_WAIT)
        except Interrupted as exc:
            return self.recover(exc)
        raise ProtocolError(f"the arbiter '{self.plan.arbiter}' did not start a resynchronization")

    def recover(self, exc: Interrupted) -> PartyState:
        """Answer a ``resync`` notice: report our last epoch, get the epoch everyone resumes from."""
        while True:
            notice = exc.notice
            if notice.kind != "resync" or notice.sender != self.plan.arbiter:
                raise ProtocolError(
                    f"unexpected '{notice.kind}' notice from '{notice.sender}' during training"
                )
            gen = int(notice.data["generation"])
            try:
                return self._sync(gen)
            except Interrupted as again:
                exc = again

    def _sync(self, gen: int) -> PartyState:
        latest = max(self.states)
        table = pa.table(
            {
                "epoch": [latest],
                "earliest": [min(self.states)],
                "digest": [self.plan.options.digest()],
                "n_rows": [self.n],
            }
        )
        self.channel.send(self.plan.arbiter, f"lr/g{gen}/state", table)
        reply = self.channel.recv(self.plan.arbiter, f"lr/g{gen}/resume")
        if not reply["ok"][0].as_py():
            raise ProtocolError(reply["reason"][0].as_py())
        epoch = int(reply["epoch"][0].as_py())
        self._use_key(PublicKey.from_arrow(self.channel.recv(self.plan.arbiter, f"lr/g{gen}/public-key")))
        self.generation = gen
        log.info("party '%s' resumes after epoch %d (generation %d)", self.channel.party, epoch, gen)
        return self.states[epoch]

    def wait_after_loss(self, exc: TransportError) -> PartyState:
        """A peer became unreachable mid-epoch: wait for it to rejoin (the arbiter will resync us)."""
        log.warning("%s; waiting up to %.0f s for the party to come back", exc, REJOIN_WAIT)
        try:
            self.channel.recv(self.plan.arbiter, "lr/never", timeout=REJOIN_WAIT)
        except Interrupted as interrupted:
            return self.recover(interrupted)
        raise exc

    # per-batch helpers
    def masked_decrypt_send(self, gradient: EncryptedVector, rows: int, tag: str) -> Any:
        """Mask, pack and send ``gradient`` to the arbiter; returns what ``masked_decrypt_receive`` needs."""
        bound = rows * self.matrix.max_abs * (LOGIT_BOUND + 2.0)
        packed, mask = mask_and_pack(gradient, bound=bound, mask_bits=MASK_BITS, randomness=self.randomness)
        self.channel.send(self.plan.arbiter, f"{tag}/masked", packed.to_arrow())
        return mask

    def refill(self, batches: list[np.ndarray], done: int) -> None:
        """Schedule the next batch's randomizers on the workers, to be ready when the network answers."""
        assert self.randomness is not None
        size = len(batches[done + 1]) if done + 1 < len(batches) else len(batches[0])
        self.randomness.fill(size + self.k + 4)

    def masked_decrypt_receive(self, mask: Any, tag: str) -> np.ndarray:
        return mask.unmask(ints_from_arrow(self.channel.recv(self.plan.arbiter, f"{tag}/unmasked")))

    def control(self, epoch: int) -> tuple[bool, float | None]:
        table = self.channel.recv(self.plan.arbiter, f"lr/g{self.generation}/e{epoch}/control")
        loss = table["loss"][0].as_py() if "loss" in table.column_names else None
        return bool(table["stop"][0].as_py()), loss

    def finish(self, state: PartyState) -> None:
        """Tell the arbiter we have the final decision, so it stays up until every party does."""
        self.channel.send(
            self.plan.arbiter, f"lr/g{self.generation}/done", pa.table({"epoch": [state.epoch]})
        )

    def run(self, epoch_fn: Callable[[PartyState], PartyState]) -> PartyState:
        """Run epochs until the arbiter says stop, resynchronizing after a peer restarts."""
        state = self.start()
        while True:
            try:
                while not state.stopped and state.epoch < self.plan.options.max_epochs:
                    state = epoch_fn(state)
                    self._keep(state)
                self.finish(state)
                return state
            except Interrupted as exc:
                state = self.recover(exc)
            except PeerTimeoutError:
                raise  # silent for the whole time-out: gone for good
            except TransportError as exc:
                state = self.wait_after_loss(exc)


def run_guest(
    channel: Channel,
    plan: LrPlan,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
    resume: list[PartyState] | None = None,
    on_epoch: Callable[[PartyState], None] | None = None,
) -> TrainedShard:
    """Guest role. ``features`` are the guest's standardized training rows with the intercept column first."""
    o = plan.options
    party = _DataParty(
        channel, plan, features, intercept=True, workers=workers, resume=resume, on_epoch=on_epoch
    )
    s = 2.0 * np.asarray(labels, dtype=float) - 1.0

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        optimizer = ShardOptimizer(o, party.k, intercept_index=0)
        optimizer.load_state(state.optimizer)
        w = state.weights
        q_total: EncryptedVector | None = None
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            u_g = party.xq[rows] @ w
            host_u = [
                EncryptedVector.from_arrow(channel.recv(h, _tag(gen, epoch, b, "u")), pk) for h in plan.hosts
            ]
            total = host_u[0]
            for u_h in host_u[1:]:
                total = total + u_h
            # Fresh randomness before it leaves: a host could otherwise divide out its own [[u_k]].
            d4 = (total + (u_g - 2.0 * s[rows])).rerandomize(randomness=party.randomness)
            d4_table = d4.to_arrow()
            for h in plan.hosts:
                channel.send(h, _tag(gen, epoch, b, "d"), d4_table)
            gradient = d4.rdot(party.matrix, rows=rows, workers=workers, randomness=party.randomness)
            tag = _tag(gen, epoch, b, "g")
            mask = party.masked_decrypt_send(gradient, m, tag)
            party.refill(batches, b)
            # While the arbiter decrypts: this batch's encrypted Taylor-loss terms.
            plain = np.column_stack([u_g, s[rows]])
            q_b: EncryptedVector | float = float(u_g @ u_g) - 4.0 * float(s[rows] @ u_g)
            for h, u_h in zip(plan.hosts, host_u, strict=True):
                terms = u_h.rdot(plain, workers=workers, rerandomize=False)  # [[u_h.u_g]], [[u_h.s]]
                wg = EncryptedVector.from_arrow(channel.recv(h, _tag(gen, epoch, b, "wg")), pk)
                q_b = wg + terms[0:1] - terms[1:2] * 2 + q_b
            q_total = q_b if q_total is None else q_total + q_b
            g = party.masked_decrypt_receive(mask, tag)
            w = optimizer.update(w, g / (4.0 * m), epoch)
            if progress:
                progress(epoch, b + 1, None)
        assert isinstance(q_total, EncryptedVector)
        channel.send(plan.arbiter, f"lr/g{gen}/e{epoch}/loss", q_total.to_arrow())
        stop, loss = party.control(epoch)
        losses = [*state.losses, float(loss) if loss is not None else math.nan]
        if progress:
            progress(epoch, len(batches), losses[-1])
        return PartyState(epoch + 1, w, optimizer.state(), losses, stop)

    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, final.losses, final.stopped, party.generation + 1)


def run_host(
    channel: Channel,
    plan: LrPlan,
    features: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
    resume: list[PartyState] | None = None,
    on_epoch: Callable[[PartyState], None] | None = None,
) -> TrainedShard:
    """Host role. ``features`` are the host's standardized training rows, in the shared order."""
    o = plan.options
    party = _DataParty(
        channel, plan, features, intercept=False, workers=workers, resume=resume, on_epoch=on_epoch
    )

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        optimizer = ShardOptimizer(o, party.k, intercept_index=None)
        optimizer.load_state(state.optimizer)
        w = state.weights
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            u = encrypt(pk, party.xq[rows] @ w, randomness=party.randomness, workers=workers)
            channel.send(plan.guest, _tag(gen, epoch, b, "u"), u.to_arrow())
            d4 = EncryptedVector.from_arrow(channel.recv(plan.guest, _tag(gen, epoch, b, "d")), pk)
            gradient = d4.rdot(party.matrix, rows=rows, workers=workers, randomness=party.randomness)
            wg = gradient.dot(w).rerandomize(randomness=party.randomness)
            channel.send(plan.guest, _tag(gen, epoch, b, "wg"), wg.to_arrow())
            tag = _tag(gen, epoch, b, "g")
            mask = party.masked_decrypt_send(gradient, m, tag)
            party.refill(batches, b)
            g = party.masked_decrypt_receive(mask, tag)
            w = optimizer.update(w, g / (4.0 * m), epoch)
            if progress:
                progress(epoch, b + 1, None)
        stop, _ = party.control(epoch)
        return PartyState(epoch + 1, w, optimizer.state(), [], stop)

    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, [], final.stopped, party.generation + 1)


# --- arbiter ---------------------------------------------------------------------------------------


class _Arbiter:
    """The arbiter's side: agreement, keys, masked decryption, the loss and the stopping rule."""

    def __init__(
        self,
        channel: Channel,
        plan: LrPlan,
        keypair: tuple[PublicKey, PrivateKey] | None,
        workers: WorkerPool | None,
        on_epoch: Callable[[ArbiterState], None] | None,
    ) -> None:
        self.channel, self.plan, self.keypair, self.workers, self.on_epoch = (
            channel,
            plan,
            keypair,
            workers,
            on_epoch,
        )
        self.public_key: PublicKey | None = None
        self.private_key: PrivateKey | None = None

    def new_key(self) -> None:
        self.public_key, self.private_key = self.keypair or generate_keypair(self.plan.options.key_bits)
        self.keypair = None  # a resynchronization always hands out a fresh key

    def hello(self) -> ArbiterState:
        hellos = {p: self.channel.recv(p, "lr/hello") for p in self.plan.data_parties}
        reason = _agreement_problem(self.plan, hellos)
        for p in self.plan.data_parties:
            self.channel.send(p, "lr/status", pa.table({"ok": [reason is None], "reason": [reason or ""]}))
        if reason is not None:
            raise ProtocolError(reason)
        self.new_key()
        assert self.public_key is not None
        for p in self.plan.data_parties:
            self.channel.send(p, "lr/public-key", self.public_key.to_arrow())
        state = ArbiterState(0, [], 0, int(hellos[self.plan.guest]["n_rows"][0].as_py()))
        self._keep(state)
        return state

    def _keep(self, state: ArbiterState) -> None:
        if self.on_epoch is not None:
            self.on_epoch(state)

    def resync(self, state: ArbiterState, history: dict[int, ArbiterState]) -> ArbiterState:
        """Start a new generation: every data party reports its last epoch; all resume from the earliest."""
        gen = state.generation + 1
        while True:
            for p in self.plan.data_parties:
                self.channel.notify(p, "resync", {"generation": str(gen)})
            try:
                reports = {p: self.channel.recv(p, f"lr/g{gen}/state") for p in self.plan.data_parties}
                break
            except Interrupted as exc:
                if exc.notice.kind != "rejoin":
                    raise
                gen += 1  # another party restarted meanwhile: start over with a newer generation
        latest = {p: int(t["epoch"][0].as_py()) for p, t in reports.items()}
        earliest = {p: int(t["earliest"][0].as_py()) for p, t in reports.items()}
        epoch = min(min(latest.values()), max(history))
        reason = None
        if any(t["digest"][0].as_py() != self.plan.options.digest() for t in reports.values()):
            reason = "a party resumed with different job options; every party must run the same job.toml"
        elif max(earliest.values()) > epoch or epoch not in history:
            reason = f"the parties' saved epochs do not overlap ({latest}); start the job again from scratch"
        if reason is None:
            self.new_key()
        for p in self.plan.data_parties:
            self.channel.send(
                p,
                f"lr/g{gen}/resume",
                pa.table({"ok": [reason is None], "reason": [reason or ""], "epoch": [epoch]}),
            )
        if reason is not None:
            raise ProtocolError(reason)
        assert self.public_key is not None
        for p in self.plan.data_parties:
            self.channel.send(p, f"lr/g{gen}/public-key", self.public_key.to_arrow())
        log.info("arbiter: generation %d resumes after epoch %d (parties were at %s)", gen, epoch, latest)
        base = history[epoch]
        return ArbiterState(base.epoch, list(base.losses), gen, base.n_rows)

    def epoch(self, state: ArbiterState) -> ArbiterState:
        assert self.private_key is not None and self.public_key is not None
        gen, epoch, o = state.generation, state.epoch, self.plan.options
        for b, _rows in enumerate(epoch_batches(state.n_rows, o, epoch)):
            for p in self.plan.data_parties:
                tag = _tag(gen, epoch, b, "g")
                packed = PackedCiphertexts.from_arrow(self.channel.recv(p, f"{tag}/masked"), self.public_key)
                plain = decrypt_packed(self.private_key, packed, workers=self.workers)
                self.channel.send(p, f"{tag}/unmasked", ints_to_arrow(plain))
        q = EncryptedVector.from_arrow(
            self.channel.recv(self.plan.guest, f"lr/g{gen}/e{epoch}/loss"), self.public_key
        )
        loss = math.log(2.0) + float(decrypt(self.private_key, q)[0]) / (8.0 * state.n_rows)
        losses = [*state.losses, loss]
        stop = EarlyStopping.replay(o, losses)
        log.info("epoch %d: loss %.6f%s", epoch + 1, loss, " (stop)" if stop else "")
        self.channel.send(
            self.plan.guest, f"lr/g{gen}/e{epoch}/control", pa.table({"stop": [stop], "loss": [loss]})
        )
        for h in self.plan.hosts:
            self.channel.send(h, f"lr/g{gen}/e{epoch}/control", pa.table({"stop": [stop]}))
        return ArbiterState(epoch + 1, losses, gen, state.n_rows)

    def finished(self, state: ArbiterState) -> bool:
        o = self.plan.options
        return state.epoch >= o.max_epochs or (bool(state.losses) and EarlyStopping.replay(o, state.losses))


def run_arbiter(
    channel: Channel,
    plan: LrPlan,
    *,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    workers: WorkerPool | None = None,
    resume: list[ArbiterState] | None = None,
    on_epoch: Callable[[ArbiterState], None] | None = None,
) -> ArbiterSummary:
    """Arbiter role: hold the private key, check that every party runs the same job, decrypt masked values."""
    arbiter = _Arbiter(channel, plan, keypair, workers, on_epoch)
    history: dict[int, ArbiterState] = {s.epoch: s for s in resume or []}
    if history:
        state = arbiter.resync(history[max(history)], history)
    else:
        state = arbiter.hello()
        history[0] = state
    while True:
        try:
            while not arbiter.finished(state):
                state = arbiter.epoch(state)
                history[state.epoch] = state
                arbiter._keep(state)
            # Stay until every data party has the final decision (a restarted one may need a resync).
            for p in plan.data_parties:
                channel.recv(p, f"lr/g{state.generation}/done")
            break
        except Interrupted as exc:
            if exc.notice.kind != "rejoin":
                raise
            state = arbiter.resync(state, history)
    stopped = state.epoch < plan.options.max_epochs
    assert arbiter.public_key is not None
    return ArbiterSummary(
        state.losses, state.epoch, stopped, arbiter.public_key.fingerprint, state.generation + 1
    )


def _agreement_problem(plan: LrPlan, hellos: dict[str, pa.Table]) -> str | None:
    """Why the parties cannot train together, or None: a party's own check, different options, row counts."""
    mine = plan.options
    for hello in hellos.values():
        problem = hello["problem"][0].as_py()
        if problem:
            return problem
    for party, hello in hellos.items():
        if hello["job_id"][0].as_py() != plan.job_id:
            return f"party '{party}' is running job '{hello['job_id'][0].as_py()}', not '{plan.job_id}'"
        if hello["digest"][0].as_py() != mine.digest():
            theirs = json.loads(hello["options"][0].as_py())
            return (
                f"party '{party}' has different job options ({', '.join(mine.differences(theirs))}); "
                "every party must run the same job.toml"
            )
    sizes = {p: int(h["n_rows"][0].as_py()) for p, h in hellos.items()}
    if len(set(sizes.values())) != 1:
        return f"parties disagree on the number of aligned training rows: {sizes}"
    return None
