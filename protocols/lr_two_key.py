"""Arbiter-free vertical logistic regression (DESIGN.md §15): every data party encrypts under its own key.

Yang et al. 2019 (arXiv 1911.09824) for a guest and any number of hosts. Every data party makes its
own Paillier key pair for every generation and hands the public key to the other data parties; the
owner of a key encrypts with the CRT fast path (``encrypt(private_key, ...)``, key-owner randomness
pool). With ``s = 2y - 1`` and the Taylor residual scaled by 4, ``4d = a + sum_k u_k`` where ``a =
u_g - 2s``. Per mini-batch ``B`` (``[[x]]_p``: encrypted under party p's key):

1. the guest sends ``[[a]]_g`` to every host; every host k sends ``[[u_k]]_k`` to the guest and to
   every other host;
2. host k's gradient is ``X_k^T a + X_k^T u_k + sum_{j != k} X_k^T u_j``: the first part from
   ``[[a]]_g``, the second in plaintext, the others from ``[[u_j]]_j``; the guest's is ``X_g^T a +
   sum_j X_g^T u_j``. Every encrypted part is masked (uniform, 80 bits wider than the part can be),
   packed and sent to its key owner, who decrypts it;
3. the key owners return the masked slots modulo ``2^T`` (``T = key_bits + 64``) plus **pairwise
   masks that cancel**: for the decryptors ``D`` of one party's parts, every pair in ``D`` shares a
   seed, the earlier party adds and the later subtracts the same SHAKE-256 stream. Each reply alone
   is uniform mod ``2^T`` when ``|D| >= 2``; their sum minus the party's own masks is its gradient.
   So a host learns its total gradient, never ``X_k^T a`` or one ``X_k^T u_j`` alone (with two or
   more hosts), and the guest learns ``sum_j X_g^T u_j``, never one host's part;
4. every party divides by ``4m``, adds its penalty and steps its own optimizer (``RoundSteps``, the
   same steps as the coordinated topology: rounds of ``loss_checks`` per pass, the schedule on passes
   over the rows, the round's iterate average; each party's columns locally whitened beforehand).

The loss needs no extra round per batch: ``Q = sum z^2 - 4 s.z = |4d|^2 - 4m = |a|^2 - 4m + sum_k
t_k`` with ``t_k = a.u_k + v_k`` and ``v_k = u_k . 4d = w_k . g_k``, which host k knows from its
own gradient. The guest adds ``[[a.u_k]]_k`` over the round (from ``[[u_k]]_k`` alone), masks it and
sends it to host k, which decrypts, adds ``v_k`` (summed over the epoch) and pairwise host masks, and
returns it; the guest removes its masks and learns ``sum_k t_k`` (so the loss per round) (one host's ``t_k`` only when it is
the only host, where the loss reveals it anyway). The guest decides whether to stop and tells every
host (stop/continue only: a host never learns the loss).

Message table (``LR_TWO_KEY``; ``g`` generation, ``e`` epoch, ``b`` batch; public keys travel as the
session's ``session.public-key``, one per data party and generation):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``lr2.setup`` | host -> guest | its number of training rows | the number of aligned training rows |
| ``lr2.seed`` | data party -> data party | a fresh 32-byte seed for one pair | nothing about any data |
| ``lr2.a`` | guest -> host | ``[[u_g - 2s]]_g`` | nothing (encrypted under the guest's key) |
| ``lr2.u`` | host -> guest, host | ``[[u_k]]_k`` | nothing (encrypted under the sender's key) |
| ``lr2.masked`` | data party -> key owner | one gradient part ``+ r``, packed | masked values only (80+ bits of statistical hiding) |
| ``lr2.unmasked`` | key owner -> data party | masked slots + pairwise masks mod ``2^T`` | its own gradient (after removing its masks and summing its parts) |
| ``lr2.loss-masked`` | guest -> host | ``[[sum_b a.u_k + r]]_k`` | a masked value only |
| ``lr2.loss-part`` | host -> guest | ``t_k + r`` + pairwise host masks mod ``2^T`` | the training loss per epoch |
| ``lr2.stop`` | guest -> host | stop | when training stops |

Faults: the guest is the coordinator of the session's ``Generations``: a restarted host asks it to
resynchronize; a restarted guest resynchronizes at once from its own checkpoints. Everyone resumes
from the last epoch all parties kept, with fresh keys and fresh seeds, and the generation is in every
tag. Training is deterministic given that state, so the resumed model equals the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from vfl.crypto import (
    EncryptedVector,
    PackedCiphertexts,
    decrypt_packed,
    ints_from_arrow,
    ints_to_arrow,
    mask_and_pack,
)
from vfl.errors import ConfigError, PeerTimeoutError, ProtocolError, TransportError
from vfl.optim import EarlyStopping
from vfl.protocols.lr_common import PartyState, RoundSteps, TrainedShard, batch_size_problem, coordinate
from vfl.protocols.lr_two_key_masks import (  # noqa: F401 - re-exported
    EXTRA_BITS,
    check_replies,
    mask_stream,
    modulus_bits,
    pair_masks,
    sum_of_parts,
)
from vfl.protocols.lr_two_key_party import (  # noqa: F401 - re-exported: the message table is declared there
    LOSS_EXPONENT,
    LOSS_MASKED,
    LOSS_PART,
    LR_TWO_KEY,
    MASK_BITS,
    SETUP,
    SLOTS,
    STOP,
    A,
    TwoKeyContext,
    TwoKeyParty,
    TwoKeyPlan,
    U,
)
from vfl.protocols.messages import one
from vfl.protocols.objectives import LOGIT_BOUND, two_key_objective
from vfl.protocols.session import REJOIN_WAIT, Session
from vfl.transport.channel import Interrupted

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

VERSION = "lr-two-key/1"  # agreed with the other settings: a party on another version refuses to start


def run_guest(
    session: Session,
    plan: TwoKeyPlan,
    features: np.ndarray,
    labels: np.ndarray,
    **context: Unpack[TwoKeyContext],
) -> TrainedShard:
    """Guest role (and coordinator). ``features`` are its standardized training rows, intercept first."""
    o, obj = plan.options, two_key_objective(plan.options)
    obj.check_targets(np.asarray(labels, dtype=float))
    party = TwoKeyParty(session, plan, features, intercept=True, **context)
    workers, progress = party.workers, party.progress
    s = obj.guest_target(labels)  # binary-lr: s = 2y - 1; linear: y

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen = state.epoch, party.generation
        steps = RoundSteps(o, state, party.n, intercept_index=0)
        loss_terms: dict[str, EncryptedVector] = {}
        plain_q = 0.0  # sum over batches of |a|^2 - 4m (binary), |a|^2 (linear): Objective.plain_loss_term
        loss_bound = 0.0  # bound on |sum_b a.u_k|
        v_bound = 0.0  # bound on |sum_b v_k| = |sum_b u_k . 4d|
        for b, rows in enumerate(steps.batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            a = party.xq[rows] @ steps.weights - obj.target_scale * s[rows]
            session.broadcast(A, plan.hosts, party.encrypt_own(a).to_arrow(), **tag)
            parts = {}
            for h in plan.hosts:
                u_h = party.receive_vector(U, h, tag)
                parts[h] = u_h.rdot(party.matrix, rows=rows, workers=workers, rerandomize=False)
                term = u_h.rdot(a[:, None], rerandomize=False)  # [[a . u_h]]_h
                loss_terms[h] = term if h not in loss_terms else loss_terms[h] + term
            masks = party.send_parts(parts, m, LOGIT_BOUND, tag)
            for h in plan.hosts:
                party.answer_parts(h, tag)
            plain_q += obj.plain_loss_term(a, s[rows])
            loss_bound += float(np.abs(a).sum()) * LOGIT_BOUND
            v_bound += LOGIT_BOUND * (float(np.abs(a).sum()) + m * len(plan.hosts) * LOGIT_BOUND)
            steps.step((party.xq[rows].T @ a + party.collect_parts(masks, tag)) / obj.gradient_divisor(m))
            if progress:
                progress(epoch, b + 1, None)
        loss_masks = []
        for h in plan.hosts:
            packed, mask = mask_and_pack(
                loss_terms[h].aligned(LOSS_EXPONENT), bound=loss_bound, mask_bits=MASK_BITS
            )
            session.send(LOSS_MASKED, h, packed.to_arrow(), gen=gen, epoch=epoch)
            loss_masks.append(mask)
        replies = [
            ints_from_arrow(session.recv(LOSS_PART, h, gen=gen, epoch=epoch), kind=SLOTS) for h in plan.hosts
        ]
        check_replies(replies, 1, party.bits)
        # The hosts' own v_k widen the bound the sum is checked against.
        extra = len(plan.hosts) * (math.ceil(math.ldexp(v_bound, -4 * LOSS_EXPONENT)) + 1)
        t = sum_of_parts(replies, loss_masks, party.bits, extra_bound=extra)[0]
        q = plain_q + math.ldexp(t, 4 * LOSS_EXPONENT)
        losses = [*state.losses, obj.loss(q, steps.rows)]
        stop = EarlyStopping.replay(steps.options, losses)  # precondition = "auto" decided by the rows
        log.info("round %d: loss %.6f%s", epoch + 1, losses[-1], " (stop)" if stop else "")
        session.broadcast(STOP, plan.hosts, pa.table({"stop": [stop]}), gen=gen, epoch=epoch)
        if progress:
            progress(epoch, len(steps.batches), losses[-1])
        return steps.end(losses, stop)

    return guest_rounds(session, plan, party, epoch_fn)


EpochFn = Callable[[PartyState], PartyState]  # one round of a model kind at one party
StartHook = Callable[[], None] | None  # what a model kind adds to a fresh start (before the first keys)


def guest_rounds(
    session: Session, plan: TwoKeyPlan, party: TwoKeyParty, epoch_fn: EpochFn, on_start: StartHook = None
) -> TrainedShard:
    """The guest's round loop of every arbiter-free model kind: set up (``on_start`` before the first
    generation's keys), run ``epoch_fn`` per round and resynchronize a restarted party."""
    o = plan.options

    def start() -> PartyState:
        if party.states:  # restarted: resynchronize at once, the hosts may be waiting for us
            return party.states[party.generations.resync(party.states)]
        problem = batch_size_problem(o, party.n, party.k, party.me)
        if problem:
            raise ConfigError(problem)  # local detail; the others learn only the reason code
        sizes = {h: int(one(session.recv(SETUP, h), "n_rows")) for h in plan.hosts}
        if any(v != party.n for v in sizes.values()):
            raise ProtocolError(f"parties disagree on the number of aligned training rows: {sizes}")
        if on_start is not None:
            on_start()
        party.new_generation(0)
        return party.fresh_state()

    def finished(state: PartyState) -> bool:
        return state.stopped or state.epoch >= party.rounds

    def step(state: PartyState) -> PartyState:
        party.keep(after := epoch_fn(state))
        return after

    def resync() -> PartyState:
        return party.states[party.generations.resync(party.states)]

    state = start()
    while True:
        try:
            state = coordinate(
                session, state, step, finished, peers=plan.hosts, done=lambda: f"lr2-g{party.generation}",
                resync=resync,
            )  # fmt: skip
            break
        except PeerTimeoutError:
            raise
        except TransportError as exc:
            log.warning("%s; waiting up to %.0f s for the party to come back", exc, REJOIN_WAIT)
            try:
                session.channel.recv(plan.hosts[0], "vfl/never", timeout=REJOIN_WAIT)
            except Interrupted as rejoin:
                if rejoin.notice.kind != "rejoin":
                    raise
                state = resync()
                continue
            raise
    return TrainedShard(state.weights, state.epoch, state.losses, state.stopped, party.generation + 1)


def run_host(
    session: Session, plan: TwoKeyPlan, features: np.ndarray, **context: Unpack[TwoKeyContext]
) -> TrainedShard:
    """Host role. ``features`` are the host's standardized training rows, in the shared order."""
    o, obj = plan.options, two_key_objective(plan.options)
    party = TwoKeyParty(session, plan, features, intercept=False, **context)
    workers, progress = party.workers, party.progress
    me, others = party.me, [h for h in plan.hosts if h != party.me]

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen = state.epoch, party.generation
        steps = RoundSteps(o, state, party.n, intercept_index=None)
        v_total = 0.0  # sum over batches of u_k . 4d = w_k . g_k (before the step)
        for b, rows in enumerate(steps.batches):
            m, w = len(rows), steps.weights
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u = party.xq[rows] @ w
            mine = party.encrypt_own(u).to_arrow()
            session.broadcast(U, [plan.guest, *others], mine, **tag)
            parts = {plan.guest: party.receive_vector(A, plan.guest, tag)}
            parts.update({j: party.receive_vector(U, j, tag) for j in others})
            parts = {
                owner: v.rdot(party.matrix, rows=rows, workers=workers, rerandomize=False)
                for owner, v in parts.items()
            }
            masks = party.send_parts(parts, m, obj.residual_bound, tag)  # |a|, |u_j| <= it
            for target in [plan.guest, *others]:
                party.answer_parts(target, tag)
            g = party.xq[rows].T @ u + party.collect_parts(masks, tag)
            v_total += float(w @ g)
            steps.step(g / obj.gradient_divisor(m))
            if progress:
                progress(epoch, b + 1, None)
        # The loss: decrypt the guest's masked a.u_k, add v_k and our share of the host masks.
        assert party.private_key is not None
        table = session.recv(LOSS_MASKED, plan.guest, gen=gen, epoch=epoch)
        slot = decrypt_packed(party.private_key, PackedCiphertexts.from_arrow(table, party.public_key))
        if len(slot) != 1:
            raise ProtocolError(f"party '{plan.guest}' sent {len(slot)} loss terms, not 1")
        noise = pair_masks(me, plan.hosts, party.seeds, f"{gen}/{epoch}/loss", 1, party.bits)[0]
        own = round(math.ldexp(v_total, -4 * LOSS_EXPONENT))
        reply = (slot[0] + own + noise) % (1 << party.bits)
        session.send(LOSS_PART, plan.guest, ints_to_arrow([reply], kind=SLOTS), gen=gen, epoch=epoch)
        return steps.end(stopped=bool(one(session.recv(STOP, plan.guest, gen=gen, epoch=epoch), "stop")))

    return host_rounds(session, plan, party, epoch_fn)


def host_rounds(
    session: Session, plan: TwoKeyPlan, party: TwoKeyParty, epoch_fn: EpochFn, on_start: StartHook = None
) -> TrainedShard:
    """A host's round loop of every arbiter-free model kind (``on_start`` after its setup message)."""
    o, me = plan.options, party.me

    def start() -> PartyState:
        if party.interrupted is not None:  # the guest resynchronizes while we start
            return party.states[party.generations.answer(party.interrupted, party.states)]
        if party.states:
            return party.states[party.generations.rejoin(party.states)]
        problem = batch_size_problem(o, party.n, party.k, me)
        if problem:
            raise ConfigError(problem)
        session.send(SETUP, plan.guest, pa.table({"n_rows": [party.n]}))
        if on_start is not None:
            on_start()
        party.new_generation(0)
        return party.fresh_state()

    state = start()
    while True:
        try:
            while not state.stopped and state.epoch < party.rounds:
                state = epoch_fn(state)
                party.keep(state)
            session.report_done(f"lr2-g{party.generation}", plan.guest)
            break
        except Interrupted as exc:
            state = party.states[party.generations.answer(exc, party.states)]
        except PeerTimeoutError:
            raise
        except TransportError as exc:
            state = party.states[party.generations.wait(party.states, error=exc)]
    return TrainedShard(state.weights, state.epoch, [], state.stopped, party.generation + 1)


__all__ = [
    "LR_TWO_KEY",
    "VERSION",
    "TwoKeyPlan",
    "guest_rounds",
    "host_rounds",
    "mask_stream",
    "modulus_bits",
    "pair_masks",
    "run_guest",
    "run_host",
    "sum_of_parts",
]
