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

Message table (``LR``; ``g`` generation, ``e`` epoch, ``b`` batch; the public key travels as the
session's ``session.public-key``):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``lr.setup`` | data party -> arbiter | its number of training rows | the number of aligned training rows |
| ``lr.u`` | host -> guest | ``[[u_k]]`` for the batch | nothing (encrypted) |
| ``lr.d`` | guest -> host | ``[[4d]]``, re-randomized | nothing (encrypted) |
| ``lr.wg`` | host -> guest | ``[[w_k . g_k]]`` | nothing (encrypted) |
| ``lr.masked`` | data party -> arbiter | ``[[g_p + r_p]]``, packed | masked values only |
| ``lr.unmasked`` | arbiter -> data party | ``g_p + r_p`` | its own gradient (after removing its mask) |
| ``lr.loss`` | guest -> arbiter | ``[[Q]]`` for the epoch | the loss per epoch |
| ``lr.control`` | arbiter -> guest | stop, loss | the loss per epoch, when training stops |
| ``lr.stop`` | arbiter -> host | stop | when training stops |

Faults: every party keeps its state at the last epoch boundaries (``PartyState`` / ``ArbiterState``;
the party runtime also saves them to disk). The session's ``Generations`` (protocols/session.py)
does the rest: a restarted party asks the arbiter (the coordinator) to resynchronize, everyone
continues from the last epoch all parties completed with a fresh public key, and the generation is
in every message tag so nothing from before the fault is taken for something after it. Training is
deterministic given that state, so the resumed model equals the uninterrupted one.
"""

from __future__ import annotations

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
    randomizers_from_arrow,
    randomizers_to_arrow,
)
from vfl.errors import ConfigError, PeerTimeoutError, ProtocolError, TransportError
from vfl.models.kinds import MAX_CLASSES
from vfl.models.packing import (
    DiagonalLoss,
    SlotLayout,
    add_packed,
    column_sums,
    encrypt_packed,
    offset_packed,
    packed_rdot,
    read_slot,
)
from vfl.optim import (
    EarlyStopping,
    IterateAverage,
    ShardOptimizer,
    epoch_batches,
    initial_weights,
    max_rounds,
    passes,
)
from vfl.options import TrainOptions
from vfl.protocols.messages import BOOL, DATA_ROLES, FIXED, FLOAT, INT, Protocol, message, one
from vfl.protocols.objectives import LOGIT_BOUND, Objective, objective_for  # noqa: F401 - re-exported
from vfl.protocols.session import Generations, Session
from vfl.transport.channel import Interrupted

log = logging.getLogger(__name__)

# LOGIT_BOUND (protocols/objectives.py): the a priori bound on |z| (the joint logit) used to size the
# gradient masks: masks are 40 bits wider than the largest gradient this bound allows, so even a logit
# 2**10 times larger keeps 30 bits of statistical hiding. Logits of standardized, clipped data stay far
# below it. Each model kind's bound on its residual is Objective.residual_bound.
MASK_BITS = 40
KEEP_STATES = 3  # epoch boundaries a party keeps, so it can roll back to where the slowest party is

BATCH = "lr/g{gen}/e{epoch}/b{batch}"
LR = Protocol(
    "lr",
    (
        message("lr.setup", "lr/setup", DATA_ROLES, "arbiter", "the number of aligned training rows",
                rows=1, n_rows=INT),
        message("lr.u", BATCH + "/u", "host", "guest", "nothing: the host's partial scores of the batch, encrypted",
                ciphertext=FIXED),
        message("lr.d", BATCH + "/d", "guest", "host", "nothing: the batch residuals, encrypted and re-randomized",
                ciphertext=FIXED),
        message("lr.wg", BATCH + "/wg", "host", "guest", "nothing: a loss term of the host, encrypted",
                ciphertext=FIXED),
        message("lr.masked", BATCH + "/g/masked", DATA_ROLES, "arbiter",
                "masked gradient values (uniformly masked, 40+ bits of statistical hiding)", ciphertext=FIXED),
        message("lr.unmasked", BATCH + "/g/unmasked", "arbiter", DATA_ROLES,
                "its own gradient (it removes its own mask)", value=FIXED),
        message("lr.loss", "lr/g{gen}/e{epoch}/loss", "guest", "arbiter", "the training loss per epoch",
                ciphertext=FIXED),
        message("lr.control", "lr/g{gen}/e{epoch}/control", "arbiter", "guest",
                "the training loss per epoch and when training stops", rows=1, stop=BOOL, loss=FLOAT),
        message("lr.stop", "lr/g{gen}/e{epoch}/stop", "arbiter", "host", "when training stops",
                rows=1, stop=BOOL),
        message("lr.expu", BATCH + "/expu", "host", "guest",
                "nothing: the exponentials of the host's partial scores of the batch, encrypted (poisson)",
                ciphertext=FIXED),
        message("lr.classes", "lr/classes", "guest", "host", "the number of classes of a multi-class model",
                rows=1, n_classes=INT),
        message("lr.kloss", "lr/g{gen}/e{epoch}/kloss", "guest", "arbiter",
                "the training loss per epoch and the number of classes (one slot; every other slot masked)",
                rows=1, ciphertext=FIXED, slot_bits=INT, slot=INT, frac_bits=INT, n_classes=INT),
    ),
    never={
        "guest": ("any host column", "any host weight", "any host gradient"),
        "host": ("labels", "guest columns", "guest weights", "scores", "the loss"),
        "arbiter": ("anything per row", "any weight", "any gradient", "any label or feature"),
    },
)  # fmt: skip
SETUP, U, D, WG, MASKED, UNMASKED, LOSS, CONTROL, STOP, EXPU, CLASSES, KLOSS = LR.messages
HOST_VECTORS = {"u": U, "expu": EXPU}  # what a host encrypts for a batch, by Objective.host_vectors

# The key owner's randomizer stream (``randomizer_stream = "arbiter"``, DESIGN.md §6): the arbiter,
# idle while the data parties compute, makes DJN randomizers with its CRT tables (~1.8x cheaper than
# the public-key path) and sends each data party its own stream; the party uses each one once and
# falls back to its own pool when the stream runs dry. A separate table, so that a job without the
# stream does not list it in its ledger.
LR_STREAM = Protocol(
    "lr-stream",
    (
        message("lr.randomizers", BATCH + "/randomizers", "arbiter", DATA_ROLES,
                "nothing: fresh encryptions of zero under the arbiter's key, independent of all data "
                "(each used once, never shared with another party)", ciphertext=FIXED),
    ),
    never={
        "guest": ("another party's randomness",),
        "host": ("another party's randomness",),
        "arbiter": ("any ciphertext it randomizes",),
    },
)  # fmt: skip
(RANDOMIZERS,) = LR_STREAM.messages
STREAM_SPARE = 16  # per batch beyond one per row: one per gradient column (rdot), packing, the loss term


def stream_size(batches: list[np.ndarray], b: int) -> int:
    """How many randomizers the arbiter streams to each data party with batch ``b``: what the party's
    next batch needs (one per row for ``[[u]]`` or ``[[4d]]``, plus ``STREAM_SPARE``)."""
    following = batches[b + 1] if b + 1 < len(batches) else batches[0]
    return len(following) + STREAM_SPARE


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
        if self.options.model != "multiclass-lr":  # multi-class has its own batch loop (below)
            self.objective.check_plan(len(self.hosts))

    @property
    def objective(self) -> Objective:
        """The steps of the batch loop that differ per model kind (protocols/objectives.py)."""
        return objective_for(self.options)

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


def batch_size_problem(options: TrainOptions, n_rows: int, n_columns: int, party: str) -> str | None:
    """Why this party cannot train on batches of the job's size, or None (checked locally, never sent).

    A party that sees its gradient ``X_B^T d`` on a batch of not many more rows than it has columns
    could solve for the residuals ``d`` and so for the labels.
    """
    need = options.min_rows_per_column * n_columns
    if n_rows <= need:
        return (
            f"party '{party}' offers {n_columns} columns but only {n_rows} rows are aligned for training; a batch "
            f"must exceed {need} rows ({options.min_rows_per_column} per column): align more rows or offer fewer columns"
        )
    batch = min(options.batch_size or n_rows, n_rows)
    if batch <= need:
        return (
            f"batch_size {options.batch_size} is too small for party '{party}' with {n_columns} columns: a party "
            f"that sees its gradient on so few rows could solve for the residuals; use a batch size above {need} "
            f"(or 0 for full batches of {n_rows} rows)"
        )
    return None


# --- data parties ----------------------------------------------------------------------------------


class _DataParty:
    """What the guest and the hosts share: setup, (re)synchronization, masked decryption, state."""

    def __init__(
        self,
        session: Session,
        plan: LrPlan,
        features: np.ndarray,
        *,
        intercept: bool,
        workers: WorkerPool | None,
        resume: list[PartyState] | None,
        on_epoch: Callable[[PartyState], None] | None,
        interrupted: Interrupted | None,
    ) -> None:
        self.session, self.plan, self.workers, self.on_epoch = session, plan, workers, on_epoch
        session.uses(LR)
        self.stream = plan.options.randomizer_stream == "arbiter"
        if self.stream:
            session.uses(LR_STREAM)
        self._next_need = 0
        self.n, self.k = features.shape
        self.matrix = prepare_matrix(features, workers=workers)
        self.xq = self.matrix.dequantized  # the matrix the encrypted products really use
        self.intercept = intercept
        self.states: dict[int, PartyState] = {s.epoch: s for s in resume or []}
        self.interrupted = interrupted
        self.public_key: PublicKey | None = None
        self.randomness: RandomnessPool | None = None
        self.classes: int | None = None
        self.generations = Generations(
            session, plan.arbiter, digest=plan.options.digest(), n_rows=self.n, on_resume=self._receive_key
        )

    @property
    def generation(self) -> int:
        return self.generations.generation

    def start(self) -> PartyState:
        """Fresh start: tell the arbiter our row count, get its key. Restart: resynchronize."""
        if self.interrupted is not None:  # the arbiter resynchronizes while we start
            return self.states[self.generations.answer(self.interrupted, self.states)]
        if self.states:
            return self.states[self.generations.rejoin(self.states)]
        problem = batch_size_problem(self.plan.options, self.n, self.k, self.session.party)
        if problem:
            raise ConfigError(problem)  # local detail; the others learn only the reason code
        self.session.send(SETUP, self.plan.arbiter, pa.table({"n_rows": [self.n]}))
        self._receive_key(0)
        o = self.plan.options
        optimizer = ShardOptimizer(o, self.k, 0 if self.intercept else None)
        if self.classes is not None:  # multi-class: one weight vector and one optimizer per class
            w0 = np.stack(
                [initial_weights(self.k, o, self.session.party) for _ in range(self.classes)], axis=1
            )
            first = PartyState(0, w0, {"classes": [optimizer.state() for _ in range(self.classes)]})
            self._keep(first)
            return first
        first = PartyState(0, initial_weights(self.k, o, self.session.party), optimizer.state())
        self._keep(first)
        return first

    def _receive_key(self, generation: int) -> None:
        self.public_key = self.session.receive_key(self.plan.arbiter, generation=generation)
        self.randomness = RandomnessPool(self.public_key, self.workers)
        if self.workers is not None:
            self.workers.warm_up(self.public_key)
        self.randomness.fill(min(self.plan.options.batch_size or self.n, self.n) + self.k + 4)

    def _keep(self, state: PartyState) -> None:
        self.states[state.epoch] = state
        for old in sorted(self.states)[:-KEEP_STATES]:
            del self.states[old]
        if self.on_epoch is not None:
            self.on_epoch(state)

    # per-batch helpers
    def masked_decrypt_send(self, gradient: EncryptedVector, rows: int, tag: dict[str, int]) -> Any:
        """Mask, pack and send ``gradient`` to the arbiter; returns what ``masked_decrypt_receive`` needs."""
        bound = rows * self.matrix.max_abs * self.plan.objective.residual_bound
        packed, mask = mask_and_pack(gradient, bound=bound, mask_bits=MASK_BITS, randomness=self.randomness)
        self.session.send(MASKED, self.plan.arbiter, packed.to_arrow(), **tag)
        return mask

    def refill(self, batches: list[np.ndarray], done: int) -> None:
        """Schedule the next batch's randomizers on the workers, to be ready when the network answers."""
        assert self.randomness is not None
        size = len(batches[done + 1]) if done + 1 < len(batches) else len(batches[0])
        if self.stream:  # the arbiter's stream for the next batch comes with the unmasked gradient
            self._next_need = size + self.k + 4
            return
        self.randomness.fill(size + self.k + 4)

    def receive_stream(self, tag: dict[str, int]) -> None:
        """Put the arbiter's randomizers for our next batch in the pool; compute only what they lack."""
        assert self.randomness is not None and self.public_key is not None
        table = self.session.recv(RANDOMIZERS, self.plan.arbiter, **tag)
        self.randomness.add(randomizers_from_arrow(table, self.public_key))
        self.randomness.fill(max(0, self._next_need - self.randomness.available))

    def masked_decrypt_receive(self, mask: Any, tag: dict[str, int]) -> np.ndarray:
        gradient = mask.unmask(ints_from_arrow(self.session.recv(UNMASKED, self.plan.arbiter, **tag)))
        if self.stream:
            self.receive_stream(tag)
        return gradient

    def run(self, epoch_fn: Callable[[PartyState], PartyState]) -> PartyState:
        """Run epochs until the arbiter says stop, resynchronizing after a peer restarts."""
        state = self.start()
        while True:
            try:
                while not state.stopped and state.epoch < max_rounds(self.n, self.plan.options):
                    state = epoch_fn(state)
                    self._keep(state)
                # Tell the arbiter we have the final decision, so it stays up until every party does.
                self.session.report_done(f"lr-g{self.generation}", self.plan.arbiter)
                return state
            except Interrupted as exc:
                state = self.states[self.generations.answer(exc, self.states)]
            except PeerTimeoutError:
                raise  # silent for the whole time-out: gone for good
            except TransportError as exc:
                state = self.states[self.generations.wait(self.states, error=exc)]


def run_guest(
    session: Session,
    plan: LrPlan,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
    resume: list[PartyState] | None = None,
    on_epoch: Callable[[PartyState], None] | None = None,
    interrupted: Interrupted | None = None,
    offset: np.ndarray | None = None,
) -> TrainedShard:
    """Guest role. ``features`` are the guest's standardized training rows with the intercept column first.

    ``labels`` are the training targets of the plan's model kind (0/1 for binary-lr, numbers for
    linear, counts for poisson); ``offset`` is poisson's ``log(exposure)`` per training row, if any.
    """
    o = plan.options
    if o.model == "multiclass-lr":
        return _multiclass_guest(
            session, plan, features, labels, workers=workers, progress=progress, resume=resume,
            on_epoch=on_epoch, interrupted=interrupted,
        )  # fmt: skip
    obj = plan.objective
    obj.check_targets(np.asarray(labels, dtype=float))
    party = _DataParty(
        session, plan, features, intercept=True, workers=workers, resume=resume, on_epoch=on_epoch,
        interrupted=interrupted,
    )  # fmt: skip
    s = obj.guest_target(labels)  # binary-lr: s = 2y - 1; regression: y

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        optimizer = ShardOptimizer(o, party.k, intercept_index=0)
        optimizer.load_state(state.optimizer)
        w, average = state.weights, IterateAverage()
        q_total: EncryptedVector | None = None
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u_g = party.xq[rows] @ w
            off = None if offset is None else offset[rows]
            host_in = [
                {
                    name: EncryptedVector.from_arrow(session.recv(HOST_VECTORS[name], h, **tag), pk)
                    for name in obj.host_vectors
                }
                for h in plan.hosts
            ]
            # Fresh randomness before it leaves: a host could otherwise divide out its own [[u_k]].
            d4 = obj.guest_residual(host_in, u_g, s[rows], off).rerandomize(randomness=party.randomness)
            session.broadcast(D, plan.hosts, d4.to_arrow(), **tag)
            gradient = d4.rdot(party.matrix, rows=rows, workers=workers, randomness=party.randomness)
            mask = party.masked_decrypt_send(gradient, m, tag)
            party.refill(batches, b)
            # While the arbiter decrypts: this batch's encrypted loss terms.
            wgs = [
                EncryptedVector.from_arrow(session.recv(WG, h, **tag), pk) if obj.host_sends_wg else None
                for h in plan.hosts
            ]
            q_b = obj.guest_loss_terms(host_in, wgs, u_g, s[rows], d4, off, workers=workers)
            q_total = q_b if q_total is None else q_total + q_b
            g = party.masked_decrypt_receive(mask, tag)
            w = optimizer.update(w, g / obj.gradient_divisor(m), passes(party.n, o, epoch))
            average.add(w)
            if progress:
                progress(epoch, b + 1, None)
        w = average.result(w, o)
        assert isinstance(q_total, EncryptedVector)
        session.send(LOSS, plan.arbiter, q_total.to_arrow(), gen=gen, epoch=epoch)
        control = session.recv(CONTROL, plan.arbiter, gen=gen, epoch=epoch)
        losses = [*state.losses, float(one(control, "loss"))]
        if progress:
            progress(epoch, len(batches), losses[-1])
        return PartyState(epoch + 1, w, optimizer.state(), losses, bool(one(control, "stop")))

    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, final.losses, final.stopped, party.generation + 1)


def run_host(
    session: Session,
    plan: LrPlan,
    features: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
    resume: list[PartyState] | None = None,
    on_epoch: Callable[[PartyState], None] | None = None,
    interrupted: Interrupted | None = None,
) -> TrainedShard:
    """Host role. ``features`` are the host's standardized training rows, in the shared order."""
    o = plan.options
    if o.model == "multiclass-lr":
        return _multiclass_host(
            session, plan, features, workers=workers, progress=progress, resume=resume, on_epoch=on_epoch,
            interrupted=interrupted,
        )  # fmt: skip
    obj = plan.objective
    party = _DataParty(
        session, plan, features, intercept=False, workers=workers, resume=resume, on_epoch=on_epoch,
        interrupted=interrupted,
    )  # fmt: skip

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        optimizer = ShardOptimizer(o, party.k, intercept_index=None)
        optimizer.load_state(state.optimizer)
        w, average = state.weights, IterateAverage()
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            for name, plain in obj.host_plain(party.xq[rows] @ w).items():
                vector = encrypt(pk, plain, randomness=party.randomness, workers=workers)
                session.send(HOST_VECTORS[name], plan.guest, vector.to_arrow(), **tag)
            d4 = EncryptedVector.from_arrow(session.recv(D, plan.guest, **tag), pk)
            gradient = d4.rdot(party.matrix, rows=rows, workers=workers, randomness=party.randomness)
            if obj.host_sends_wg:
                wg = gradient.dot(w).rerandomize(randomness=party.randomness)
                session.send(WG, plan.guest, wg.to_arrow(), **tag)
            mask = party.masked_decrypt_send(gradient, m, tag)
            party.refill(batches, b)
            g = party.masked_decrypt_receive(mask, tag)
            w = optimizer.update(w, g / obj.gradient_divisor(m), passes(party.n, o, epoch))
            average.add(w)
            if progress:
                progress(epoch, b + 1, None)
        w = average.result(w, o)
        stop = bool(one(session.recv(STOP, plan.arbiter, gen=gen, epoch=epoch), "stop"))
        return PartyState(epoch + 1, w, optimizer.state(), [], stop)

    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, [], final.stopped, party.generation + 1)


# --- arbiter ---------------------------------------------------------------------------------------


class _Arbiter:
    """The arbiter's side: row counts, keys, masked decryption, the loss and the stopping rule."""

    def __init__(
        self,
        session: Session,
        plan: LrPlan,
        keypair: tuple[PublicKey, PrivateKey] | None,
        workers: WorkerPool | None,
        on_epoch: Callable[[ArbiterState], None] | None,
        history: dict[int, ArbiterState],
    ) -> None:
        self.session, self.plan, self.keypair, self.workers, self.on_epoch = (
            session, plan, keypair, workers, on_epoch,
        )  # fmt: skip
        session.uses(LR)
        self.stream: RandomnessPool | None = None  # the key owner's randomizers for the data parties
        if plan.options.randomizer_stream == "arbiter":
            session.uses(LR_STREAM)
        self.history = history
        self.public_key: PublicKey | None = None
        self.private_key: PrivateKey | None = None
        n_rows = history[max(history)].n_rows if history else 0
        self.generations = Generations(
            session, session.party, digest=plan.options.digest(), n_rows=n_rows, on_resume=self._hand_out_key
        )

    def _hand_out_key(self, generation: int) -> None:
        """A fresh key for every generation (a given key pair only for the first)."""
        self.public_key, self.private_key = self.keypair or generate_keypair(self.plan.options.key_bits)
        self.keypair = None
        self.session.hand_out_key(self.public_key, self.plan.data_parties, generation=generation)
        if self.plan.options.randomizer_stream == "arbiter":
            if self.stream is not None:
                self.stream.close()
            self.stream = RandomnessPool(self.private_key, self.workers)
            first = self.plan.options.batch_size or 512  # the first batch's stream, ready when it is due
            self.stream.fill((first + STREAM_SPARE) * len(self.plan.data_parties))

    def send_stream(self, party: str, batches: list[np.ndarray], b: int, tag: dict[str, int]) -> None:
        """``party``'s own randomizers for its next batch, sent right after its unmasked gradient (they
        were computed on the workers during this batch), and the next ones scheduled. None is sent twice."""
        if self.stream is None:
            return
        assert self.public_key is not None
        count = stream_size(batches, b)
        values = self.stream.take(count)
        self.session.send(RANDOMIZERS, party, randomizers_to_arrow(values, self.public_key), **tag)
        self.stream.fill(count)

    def setup(self) -> ArbiterState:
        sizes = {p: int(one(self.session.recv(SETUP, p), "n_rows")) for p in self.plan.data_parties}
        if len(set(sizes.values())) != 1:
            raise ProtocolError(f"parties disagree on the number of aligned training rows: {sizes}")
        self._hand_out_key(0)
        state = ArbiterState(0, [], 0, sizes[self.plan.guest])
        self._keep(state)
        return state

    def _keep(self, state: ArbiterState) -> None:
        self.history[state.epoch] = state
        if self.on_epoch is not None:
            self.on_epoch(state)

    def resync(self) -> ArbiterState:
        """Start a new generation; everyone resumes from the latest epoch all parties kept."""
        epoch = self.generations.resync(self.history)
        base = self.history[epoch]
        return ArbiterState(base.epoch, list(base.losses), self.generations.generation, base.n_rows)

    def epoch(self, state: ArbiterState) -> ArbiterState:
        assert self.private_key is not None and self.public_key is not None
        gen, epoch, o, session = state.generation, state.epoch, self.plan.options, self.session
        batches = epoch_batches(state.n_rows, o, epoch)
        for b, _rows in enumerate(batches):
            for p in self.plan.data_parties:
                tag = {"gen": gen, "epoch": epoch, "batch": b}
                packed = PackedCiphertexts.from_arrow(session.recv(MASKED, p, **tag), self.public_key)
                plain = decrypt_packed(self.private_key, packed, workers=self.workers)
                session.send(UNMASKED, p, ints_to_arrow(plain), **tag)
                self.send_stream(p, batches, b, tag)
        rows = sum(len(r) for r in batches)  # the round's rows (a share of the pass with loss_checks > 1)
        if o.model == "multiclass-lr":
            loss = multiclass_loss(
                self.private_key, session.recv(KLOSS, self.plan.guest, gen=gen, epoch=epoch), rows
            )
        else:
            q = EncryptedVector.from_arrow(
                session.recv(LOSS, self.plan.guest, gen=gen, epoch=epoch), self.public_key
            )
            loss = self.plan.objective.loss(float(decrypt(self.private_key, q)[0]), rows)
        losses = [*state.losses, loss]
        stop = EarlyStopping.replay(o, losses)
        log.info("epoch %d: loss %.6f%s", epoch + 1, loss, " (stop)" if stop else "")
        session.send(
            CONTROL, self.plan.guest, pa.table({"stop": [stop], "loss": [loss]}), gen=gen, epoch=epoch
        )
        session.broadcast(STOP, self.plan.hosts, pa.table({"stop": [stop]}), gen=gen, epoch=epoch)
        return ArbiterState(epoch + 1, losses, gen, state.n_rows)

    def finished(self, state: ArbiterState) -> bool:
        o = self.plan.options
        return state.epoch >= max_rounds(state.n_rows, o) or (
            bool(state.losses) and EarlyStopping.replay(o, state.losses)
        )


def run_arbiter(
    session: Session,
    plan: LrPlan,
    *,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    workers: WorkerPool | None = None,
    resume: list[ArbiterState] | None = None,
    on_epoch: Callable[[ArbiterState], None] | None = None,
) -> ArbiterSummary:
    """Arbiter role: hold the private key, check the row counts, decrypt masked values, decide when to stop."""
    arbiter = _Arbiter(session, plan, keypair, workers, on_epoch, {s.epoch: s for s in resume or []})
    state = arbiter.resync() if arbiter.history else arbiter.setup()
    while True:
        try:
            while not arbiter.finished(state):
                state = arbiter.epoch(state)
                arbiter._keep(state)
            # Stay until every data party has the final decision (a restarted one may need a resync).
            for p in plan.data_parties:
                session.await_done(f"lr-g{state.generation}", p)
            break
        except Interrupted as exc:
            if exc.notice.kind != "rejoin":
                raise
            state = arbiter.resync()
    stopped = state.epoch < max_rounds(state.n_rows, plan.options)
    assert arbiter.public_key is not None
    return ArbiterSummary(
        state.losses, state.epoch, stopped, arbiter.public_key.fingerprint, state.generation + 1
    )


# --- multi-class (one-vs-rest, K residuals packed per ciphertext; DESIGN.md §16) -----------------------

# Every party's quantized columns satisfy |q| <= 2^19 - 1 (at most 20-bit fixed point, vfl/crypto/multiexp.py),
# so one slot layout, known to all parties from the shared options, fits every party's X^T [[D]].
X_BOUND = (1 << 19) - 1


def slot_layout(options: TrainOptions, n_rows: int, n_classes: int, key_bits: int) -> SlotLayout:
    """The packing every party of a multi-class job uses (the same from the shared options and row count)."""
    batch = max(len(b) for b in epoch_batches(n_rows, options, 0))  # the same sizes every epoch
    layout = SlotLayout.for_problem(
        n_classes, batch, X_BOUND, LOGIT_BOUND + 2.0, key_bits, mask_bits=MASK_BITS
    )
    if layout.n_plaintexts != 1:
        raise ConfigError(
            f"{n_classes} classes do not fit one {key_bits}-bit plaintext ({layout.slots_per_plaintext} slots "
            f"of {layout.slot_bits} bits); use a larger key_bits or smaller batches"
        )
    return layout


def check_multiclass(options: TrainOptions, n_rows: int, n_classes: int) -> None:
    """Refuse, before any peer is contacted, K classes that the key's plaintexts cannot carry."""
    layout = slot_layout(options, n_rows, n_classes, options.key_bits)
    top = (options.key_bits - 1) // layout.slot_bits
    if 2 * n_classes - 1 > top:
        raise ConfigError(
            f"multiclass-lr with a {options.key_bits}-bit key takes at most {(top + 1) // 2} classes (its loss "
            f"needs 2K - 1 slots of {layout.slot_bits} bits), the label has {n_classes}; use a larger key_bits"
        )


def _class_optimizers(
    o: TrainOptions, k: int, state: dict[str, Any], intercept: int | None
) -> list[ShardOptimizer]:
    optimizers = []
    for saved in state["classes"]:
        opt = ShardOptimizer(o, k, intercept_index=intercept)
        opt.load_state(saved)
        optimizers.append(opt)
    return optimizers


def _step(optimizers: list[ShardOptimizer], w: np.ndarray, g: np.ndarray, epoch: int) -> np.ndarray:
    return np.stack([opt.update(w[:, c], g[:, c], epoch) for c, opt in enumerate(optimizers)], axis=1)


def _packed_gradient(
    party: _DataParty, layout: SlotLayout, packed: EncryptedVector, rows: np.ndarray, tag: dict[str, int]
) -> np.ndarray:
    """``X_p[rows]^T 4D`` as a (columns, K) float matrix: one multi-exponentiation, masked for the arbiter."""
    out = packed_rdot(packed, party.matrix, rows, randomness=party.randomness)
    messages, mask = layout.mask([out], randomness=party.randomness)
    party.session.send(MASKED, party.plan.arbiter, messages[0].to_arrow(), **tag)
    slots = ints_from_arrow(party.session.recv(UNMASKED, party.plan.arbiter, **tag))
    ints = mask.unmask([slots], column_sums(party.matrix, rows))
    return layout.gradient(ints, party.matrix.shifts)


def _multiclass_guest(
    session: Session,
    plan: LrPlan,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    workers: WorkerPool | None,
    progress: Progress | None,
    resume: list[PartyState] | None,
    on_epoch: Callable[[PartyState], None] | None,
    interrupted: Interrupted | None,
) -> TrainedShard:
    """Guest role of one-vs-rest multi-class LR: ``labels`` are class indices ``0..K-1``."""
    o = plan.options
    y = np.asarray(labels).astype(np.int64)
    n_classes = int(y.max()) + 1
    signs = 2.0 * np.eye(n_classes)[y] - 1.0  # s_ic
    party = _DataParty(
        session, plan, features, intercept=True, workers=workers, resume=resume, on_epoch=on_epoch,
        interrupted=interrupted,
    )  # fmt: skip
    party.classes = n_classes
    if not resume and interrupted is None:
        session.broadcast(CLASSES, plan.hosts, pa.table({"n_classes": [n_classes]}))
    hosts = len(plan.hosts)

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        layout = slot_layout(o, party.n, n_classes, pk.bits)
        offsets = hosts * offset_packed(layout)
        optimizers = _class_optimizers(o, party.k, state.optimizer, 0)
        w = state.weights
        loss = DiagonalLoss(layout, pk)
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u_g = party.xq[rows] @ w  # (m, K)
            total = None
            for h in plan.hosts:
                u_h = EncryptedVector.from_arrow(session.recv(U, h, **tag), pk)
                total = u_h if total is None else total + u_h
            assert total is not None
            # Slots: sum_h (u_h 2^f + E) + (u_g - 2s) 2^f + E - H E = 4D 2^f + E.
            mine = [p - offsets for p in layout.pack(u_g - 2.0 * signs[rows])]
            d4 = add_packed(total, mine).rerandomize(randomness=party.randomness)
            session.broadcast(D, plan.hosts, d4.to_arrow(), **tag)
            g = _packed_gradient(party, layout, d4, rows, tag)
            party.refill(batches, b)
            # The loss: sum_c |4D_c|^2 - 4mK = sum_c (w_c.g_c - 2 s_c.4D_c) + sum_h t_h - 4mK, at 2^f.
            loss.add_label_terms(d4, signs[rows].astype(np.int64), -2)
            e = layout.residual_offset
            plain = float(np.sum(w * g)) - 4.0 * m * n_classes
            loss.add_top(int(round(plain * 2.0**layout.frac_bits)) + 2 * e * int(signs[rows].sum()))
            for h in plan.hosts:
                loss.add_top(EncryptedVector.from_arrow(session.recv(WG, h, **tag), pk))
            w = _step(optimizers, w, g / (4.0 * m), epoch)
            if progress:
                progress(epoch, b + 1, None)
        record = pa.table(
            {
                "ciphertext": pa.array([int(loss.seal(party.randomness)).to_bytes(2 * pk.key_bytes, "big")],
                                       pa.binary(2 * pk.key_bytes)),
                "slot_bits": [layout.slot_bits],
                "slot": [n_classes - 1],
                "frac_bits": [layout.frac_bits],
                "n_classes": [n_classes],
            }
        )  # fmt: skip
        session.send(KLOSS, plan.arbiter, record, gen=gen, epoch=epoch)
        control = session.recv(CONTROL, plan.arbiter, gen=gen, epoch=epoch)
        losses = [*state.losses, float(one(control, "loss"))]
        if progress:
            progress(epoch, len(batches), losses[-1])
        states = {"classes": [opt.state() for opt in optimizers]}
        return PartyState(epoch + 1, w, states, losses, bool(one(control, "stop")))

    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, final.losses, final.stopped, party.generation + 1)


def _multiclass_host(
    session: Session,
    plan: LrPlan,
    features: np.ndarray,
    *,
    workers: WorkerPool | None,
    progress: Progress | None,
    resume: list[PartyState] | None,
    on_epoch: Callable[[PartyState], None] | None,
    interrupted: Interrupted | None,
) -> TrainedShard:
    """Host role of one-vs-rest multi-class LR: K partial scores per row packed in one ciphertext."""
    o = plan.options
    party = _DataParty(
        session, plan, features, intercept=False, workers=workers, resume=resume, on_epoch=on_epoch,
        interrupted=interrupted,
    )  # fmt: skip
    if resume:
        party.classes = int(np.asarray(resume[0].weights).shape[1])
    else:
        party.classes = int(one(session.recv(CLASSES, plan.guest), "n_classes"))
        if not 2 <= party.classes <= MAX_CLASSES:
            raise ProtocolError(f"party '{plan.guest}' announced {party.classes} classes (2..{MAX_CLASSES})")
    n_classes = party.classes

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        layout = slot_layout(o, party.n, n_classes, pk.bits)
        optimizers = _class_optimizers(o, party.k, state.optimizer, None)
        w = state.weights
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u = encrypt_packed(pk, layout.pack(party.xq[rows] @ w), randomness=party.randomness)
            session.send(U, plan.guest, u.to_arrow(), **tag)
            d4 = EncryptedVector.from_arrow(session.recv(D, plan.guest, **tag), pk)
            g = _packed_gradient(party, layout, d4, rows, tag)
            party.refill(batches, b)
            # Its loss term sum_c u_c . 4D_c = sum_c w_c . g_c, encrypted for the arbiter's one slot.
            t = encrypt(
                pk, [float(np.sum(w * g))], exponent=-(layout.frac_bits // 4), randomness=party.randomness
            )
            session.send(WG, plan.guest, t.to_arrow(), **tag)
            w = _step(optimizers, w, g / (4.0 * m), epoch)
            if progress:
                progress(epoch, b + 1, None)
        stop = bool(one(session.recv(STOP, plan.arbiter, gen=gen, epoch=epoch), "stop"))
        states = {"classes": [opt.state() for opt in optimizers]}
        return PartyState(epoch + 1, w, states, [], stop)

    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, [], final.stopped, party.generation + 1)


def multiclass_loss(private_key: PrivateKey, record: pa.Table, n_rows: int) -> float:
    """The arbiter's side: ``K log 2 + Q / 8n`` from the one unmasked slot of the guest's loss ciphertext."""
    ct = int.from_bytes(one(record, "ciphertext"), "big")
    q = read_slot(private_key, ct, int(one(record, "slot_bits")), int(one(record, "slot")))
    k = int(one(record, "n_classes"))
    return k * math.log(2.0) + q / 2.0 ** int(one(record, "frac_bits")) / (8.0 * n_rows)
