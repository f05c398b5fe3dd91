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
from collections.abc import Callable
from typing import TYPE_CHECKING

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
    ints_to_arrow,
    randomizers_to_arrow,
)
from vfl.errors import ProtocolError
from vfl.optim import EarlyStopping, epoch_batches, max_rounds
from vfl.protocols.lr_chain import send_exp_chain
from vfl.protocols.lr_common import (  # noqa: F401 - re-exported
    KEEP_STATES,
    ArbiterState,
    ArbiterSummary,
    LrPlan,
    PartyState,
    Progress,
    RoleContext,
    RoundSteps,
    TrainedShard,
    batch_size_problem,
    coordinate,
    role_arguments,
)
from vfl.protocols.lr_multiclass import (  # noqa: F401 - re-exported
    X_BOUND,
    check_multiclass,
    multiclass_guest,
    multiclass_host,
    multiclass_loss,
    slot_layout,
)
from vfl.protocols.lr_party import (  # noqa: F401 - re-exported: the message tables are declared there
    BATCH,
    CLASSES,
    CONTROL,
    EXPU,
    HOST_VECTORS,
    KLOSS,
    LOSS,
    LR,
    LR_STREAM,
    MASK_BITS,
    MASKED,
    RANDOMIZERS,
    SETUP,
    STOP,
    STREAM_SPARE,
    UNMASKED,
    WG,
    D,
    DataParty,
    U,
    stream_size,
)
from vfl.protocols.messages import one
from vfl.protocols.objectives import LOGIT_BOUND, Objective, objective_for  # noqa: F401 - re-exported
from vfl.protocols.session import Generations, Session

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)


def run_guest(
    session: Session, plan: LrPlan, features: np.ndarray, labels: np.ndarray, *,
    offset: np.ndarray | None = None, **context: Unpack[RoleContext],
) -> TrainedShard:  # fmt: skip
    """Guest role. ``features`` are the guest's standardized training rows with the intercept column first.

    ``labels`` are the training targets of the plan's model kind (0/1 for binary-lr, numbers for
    linear, counts for poisson); ``offset`` is poisson's ``log(exposure)`` per training row, if any.
    """
    o, args = plan.options, role_arguments(context)
    if o.model == "multiclass-lr":
        return multiclass_guest(session, plan, features, labels, **args)
    obj = plan.objective
    obj.check_targets(np.asarray(labels, dtype=float))
    party = DataParty(
        session,
        plan,
        features,
        intercept=True,
        intercept_start=obj.initial_intercept(labels, offset),
        **context,
    )
    workers, progress = args["workers"], args["progress"]
    s = obj.guest_target(labels)  # binary-lr: s = 2y - 1; regression: y

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        steps = RoundSteps(o, state, party.n, intercept_index=0)
        q_total: EncryptedVector | None = None
        for b, rows in enumerate(steps.batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u_g = party.xq[rows] @ steps.weights
            off = None if offset is None else offset[rows]
            host_in = [
                {
                    name: EncryptedVector.from_arrow(session.recv(HOST_VECTORS[name], h, **tag), pk)
                    for name in obj.host_sends(i, len(plan.hosts))
                }
                for i, h in enumerate(plan.hosts)
            ]
            # Fresh randomness before it leaves: a host could otherwise divide out its own [[u_k]].
            d4 = obj.guest_residual(host_in, u_g, s[rows], off).rerandomize(randomness=party.randomness)
            session.broadcast(D, plan.hosts, d4.to_arrow(), **tag)
            party.refill(steps.batches, b)  # the workers make the next batch's while we multiply
            gradient = d4.rdot(party.matrix, rows=rows, workers=workers, randomness=party.randomness)
            mask = party.masked_decrypt_send(gradient, m, tag)
            # While the arbiter decrypts: this batch's encrypted loss terms.
            wgs = [
                EncryptedVector.from_arrow(session.recv(WG, h, **tag), pk) if obj.host_sends_wg else None
                for h in plan.hosts
            ]
            q_b = obj.guest_loss_terms(host_in, wgs, u_g, s[rows], d4, off, workers=workers)
            q_total = q_b if q_total is None else q_total + q_b
            steps.step(party.masked_decrypt_receive(mask, tag) / obj.gradient_divisor(m))
            if progress:
                progress(epoch, b + 1, None)
        assert isinstance(q_total, EncryptedVector)
        session.send(LOSS, plan.arbiter, q_total.to_arrow(), gen=gen, epoch=epoch)
        control = session.recv(CONTROL, plan.arbiter, gen=gen, epoch=epoch)
        losses = [*state.losses, float(one(control, "loss"))]
        if progress:
            progress(epoch, len(steps.batches), losses[-1])
        return steps.end(losses, bool(one(control, "stop")))

    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, final.losses, final.stopped, party.generation + 1)


def run_host(
    session: Session, plan: LrPlan, features: np.ndarray, **context: Unpack[RoleContext]
) -> TrainedShard:
    """Host role. ``features`` are the host's standardized training rows, in the shared order."""
    o, args = plan.options, role_arguments(context)
    if o.model == "multiclass-lr":
        return multiclass_host(session, plan, features, **args)
    obj = plan.objective
    party = DataParty(session, plan, features, intercept=False, **context)
    workers, progress = args["workers"], args["progress"]

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        steps = RoundSteps(o, state, party.n, intercept_index=None)
        for b, rows in enumerate(steps.batches):
            m, w = len(rows), steps.weights
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u = party.xq[rows] @ w
            for name, plain in obj.host_plain(u).items():
                if name == "expu" and len(plan.hosts) > 1:  # the hosts' chain (protocols/lr_chain.py)
                    send_exp_chain(
                        session,
                        plan.hosts,
                        plan.guest,
                        u,
                        pk,
                        tag,
                        randomness=party.randomness,
                        workers=workers,
                    )
                    continue
                vector = encrypt(pk, plain, randomness=party.randomness, workers=workers)
                session.send(HOST_VECTORS[name], plan.guest, vector.to_arrow(), **tag)
            party.refill(steps.batches, b)  # the workers make the next batch's while we wait and multiply
            d4 = EncryptedVector.from_arrow(session.recv(D, plan.guest, **tag), pk)
            gradient = d4.rdot(party.matrix, rows=rows, workers=workers, randomness=party.randomness)
            if obj.host_sends_wg:
                wg = gradient.dot(w).rerandomize(randomness=party.randomness)
                session.send(WG, plan.guest, wg.to_arrow(), **tag)
            mask = party.masked_decrypt_send(gradient, m, tag)
            steps.step(party.masked_decrypt_receive(mask, tag) / obj.gradient_divisor(m))
            if progress:
                progress(epoch, b + 1, None)
        return steps.end(stopped=bool(one(session.recv(STOP, plan.arbiter, gen=gen, epoch=epoch), "stop")))

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
        stop = EarlyStopping.replay(o.at_rows(state.n_rows), losses)
        log.info("epoch %d: loss %.6f%s", epoch + 1, loss, " (stop)" if stop else "")
        session.send(
            CONTROL, self.plan.guest, pa.table({"stop": [stop], "loss": [loss]}), gen=gen, epoch=epoch
        )
        session.broadcast(STOP, self.plan.hosts, pa.table({"stop": [stop]}), gen=gen, epoch=epoch)
        return ArbiterState(epoch + 1, losses, gen, state.n_rows)

    def finished(self, state: ArbiterState) -> bool:
        o = self.plan.options
        return state.epoch >= max_rounds(state.n_rows, o) or (
            bool(state.losses) and EarlyStopping.replay(o.at_rows(state.n_rows), state.losses)
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

    def step(state: ArbiterState) -> ArbiterState:
        arbiter._keep(after := arbiter.epoch(state))
        return after

    state = coordinate(
        session, arbiter.resync() if arbiter.history else arbiter.setup(), step, arbiter.finished,
        peers=plan.data_parties, done=lambda: f"lr-g{arbiter.generations.generation}", resync=arbiter.resync,
    )  # fmt: skip
    stopped = state.epoch < max_rounds(state.n_rows, plan.options)
    assert arbiter.public_key is not None
    return ArbiterSummary(
        state.losses, state.epoch, stopped, arbiter.public_key.fingerprint, state.generation + 1
    )
