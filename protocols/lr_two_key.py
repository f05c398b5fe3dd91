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
4. every party divides by ``4m``, adds its penalty and steps its own optimizer.

The loss needs no extra round per batch: ``Q = sum z^2 - 4 s.z = |4d|^2 - 4m = |a|^2 - 4m + sum_k
t_k`` with ``t_k = a.u_k + v_k`` and ``v_k = u_k . 4d = w_k . g_k``, which host k knows from its
own gradient. The guest adds ``[[a.u_k]]_k`` over the epoch (from ``[[u_k]]_k`` alone), masks it and
sends it to host k, which decrypts, adds ``v_k`` (summed over the epoch) and pairwise host masks, and
returns it; the guest removes its masks and learns ``sum_k t_k`` (one host's ``t_k`` only when it is
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
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vfl.crypto import (
    EncryptedVector,
    MaskState,
    PackedCiphertexts,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    WorkerPool,
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
from vfl.protocols.lr_common import PartyState, Progress, TrainedShard, batch_size_problem, keep_state
from vfl.protocols.lr_two_key_masks import (  # noqa: F401 - EXTRA_BITS re-exported
    EXTRA_BITS,
    check_replies,
    mask_stream,
    modulus_bits,
    pair_masks,
    sum_of_parts,
)
from vfl.protocols.messages import BOOL, DATA_ROLES, FIXED, INT, Protocol, message, one
from vfl.protocols.objectives import LOGIT_BOUND
from vfl.protocols.session import REJOIN_WAIT, Generations, Session
from vfl.transport.channel import Interrupted

log = logging.getLogger(__name__)

VERSION = "lr-two-key/1"  # agreed with the other settings: a party on another version refuses to start
MASK_BITS = 80  # statistical hiding of every masked value a key owner decrypts
LOSS_EXPONENT = -32  # the loss terms travel at 16**-32 (2**-128) resolution
SLOTS = b"lr2.masked_sum"

BATCH = "lr2/g{gen}/e{epoch}/b{batch}"
EPOCH = "lr2/g{gen}/e{epoch}"
LR_TWO_KEY = Protocol(
    "lr-two-key",
    (
        message("lr2.setup", "lr2/setup", "host", "guest", "the number of aligned training rows",
                rows=1, n_rows=INT),
        message("lr2.seed", "lr2/g{gen}/seed/{first}/{second}", DATA_ROLES, DATA_ROLES,
                "a fresh random seed shared with one other data party (for masks that cancel in a sum)",
                rows=1, seed=FIXED),
        message("lr2.a", BATCH + "/a", "guest", "host",
                "nothing: the guest's residual part of the batch, encrypted under the guest's key",
                ciphertext=FIXED),
        message("lr2.u", BATCH + "/u", "host", DATA_ROLES,
                "nothing: a host's partial scores of the batch, encrypted under that host's key",
                ciphertext=FIXED),
        message("lr2.masked", BATCH + "/g/masked", DATA_ROLES, DATA_ROLES,
                "masked values of one gradient part of a peer (uniformly masked, 80+ bits of statistical hiding)",
                ciphertext=FIXED),
        message("lr2.unmasked", BATCH + "/g/unmasked", DATA_ROLES, DATA_ROLES,
                "its own gradient: the sum of its parts (with two or more decrypting parties each reply alone "
                "is uniformly masked)", value=FIXED),
        message("lr2.loss-masked", EPOCH + "/loss/masked", "guest", "host",
                "a masked loss term (uniformly masked, 80+ bits of statistical hiding)", ciphertext=FIXED),
        message("lr2.loss-part", EPOCH + "/loss/part", "host", "guest",
                "the training loss per epoch (with two or more hosts each host's term alone is uniformly masked)",
                value=FIXED),
        message("lr2.stop", EPOCH + "/stop", "guest", "host", "when training stops", rows=1, stop=BOOL),
    ),
    never={
        "guest": ("any host column", "any host weight", "any host gradient",
                  "a single host's gradient part or loss term (with two or more hosts)"),
        "host": ("labels", "guest columns", "guest weights", "scores", "the loss",
                 "a single other party's gradient part (with two or more hosts)"),
    },
)  # fmt: skip
SETUP, SEED, A, U, MASKED, UNMASKED, LOSS_MASKED, LOSS_PART, STOP = LR_TWO_KEY.messages


@dataclass(frozen=True)
class TwoKeyPlan:
    """The parties of one arbiter-free training job and its shared options (the guest coordinates)."""

    job_id: str
    guest: str
    hosts: tuple[str, ...]
    options: TrainOptions

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("training needs at least one host")

    @property
    def data_parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts)

    @property
    def coordinator(self) -> str:
        return self.guest

    def decryptors(self, target: str) -> tuple[str, ...]:
        """Who decrypts ``target``'s encrypted gradient parts: the guest and the other hosts (for a host),
        every host (for the guest); in the parties' order."""
        return tuple(p for p in self.data_parties if p != target)


# --- the data parties ----------------------------------------------------------------------------


class _Party:
    """What the guest and the hosts share: keys and seeds per generation, masked decryption, state."""

    def __init__(
        self,
        session: Session,
        plan: TwoKeyPlan,
        features: np.ndarray,
        *,
        intercept: bool,
        workers: WorkerPool | None,
        keypair: tuple[PublicKey, PrivateKey] | None,
        resume: list[PartyState] | None,
        on_epoch: Callable[[PartyState], None] | None,
        interrupted: Interrupted | None,
    ) -> None:
        self.session, self.plan, self.workers, self.on_epoch = session, plan, workers, on_epoch
        session.uses(LR_TWO_KEY)
        self.me = session.party
        self.n, self.k = features.shape
        self.matrix = prepare_matrix(features, workers=workers)
        self.xq = self.matrix.dequantized  # the matrix the encrypted products really use
        self.intercept = intercept
        self.keypair = keypair
        if keypair is not None and keypair[0].bits != plan.options.key_bits:
            raise ConfigError(
                f"the key pair given to party '{self.me}' has {keypair[0].bits} bits, but the job uses "
                f"key_bits = {plan.options.key_bits}"
            )
        self.states: dict[int, PartyState] = {s.epoch: s for s in resume or []}
        self.interrupted = interrupted
        self.bits = modulus_bits(plan.options.key_bits)
        self.private_key: PrivateKey | None = None
        self.own_pool: RandomnessPool | None = None
        self.peer_keys: dict[str, PublicKey] = {}
        self.seeds: dict[str, bytes] = {}
        self.generations = Generations(
            session,
            plan.coordinator,
            digest=plan.options.digest(),
            n_rows=self.n,
            on_resume=self._new_generation,
        )

    @property
    def generation(self) -> int:
        return self.generations.generation

    @property
    def batch_rows(self) -> int:
        return min(self.plan.options.batch_size or self.n, self.n)

    def _new_generation(self, generation: int) -> None:
        """Fresh keys and fresh pairwise seeds for every generation (a given key pair only for the first)."""
        s, o, others = self.session, self.plan.options, [p for p in self.plan.data_parties if p != self.me]
        public, self.private_key = self.keypair or generate_keypair(o.key_bits)
        self.keypair = None
        s.hand_out_key(public, others, generation=generation)
        self.own_pool = RandomnessPool(self.private_key, self.workers)
        self.own_pool.fill(self.batch_rows)
        order = list(self.plan.data_parties)
        for peer in others:  # the earlier party of each pair draws the seed
            if order.index(self.me) < order.index(peer):
                seed = secrets.token_bytes(32)
                self.seeds[peer] = seed
                table = pa.table({"seed": pa.array([seed], pa.binary(32))})
                s.send(SEED, peer, table, gen=generation, first=self.me, second=peer)
        for peer in others:
            key = s.receive_key(peer, generation=generation)
            if key.bits != o.key_bits:
                raise ProtocolError(
                    f"party '{peer}' sent a {key.bits}-bit public key, but the job uses key_bits = {o.key_bits}; "
                    "every party must run the same job.toml and the same vfl version"
                )
            self.peer_keys[peer] = key
            if order.index(peer) < order.index(self.me):
                seed = one(s.recv(SEED, peer, gen=generation, first=peer, second=self.me), "seed")
                if len(seed) != 32:
                    raise ProtocolError(f"party '{peer}' sent a pairwise seed of {len(seed)} bytes, not 32")
                self.seeds[peer] = seed

    @property
    def public_key(self) -> PublicKey:
        assert self.private_key is not None
        return self.private_key.public_key

    def fresh_state(self) -> PartyState:
        o = self.plan.options
        optimizer = ShardOptimizer(o, self.k, 0 if self.intercept else None)
        first = PartyState(0, initial_weights(self.k, o, self.me), optimizer.state())
        self._keep(first)
        return first

    def _keep(self, state: PartyState) -> None:
        keep_state(self.states, state, self.on_epoch)

    def encrypt_own(self, values: np.ndarray) -> EncryptedVector:
        """``[[values]]`` under our own key, with randomizers the key-owner pool computed by CRT."""
        assert self.own_pool is not None
        out = encrypt(self.public_key, values, randomness=self.own_pool)
        self.own_pool.fill(self.batch_rows)  # the next batch's, while we wait on the network
        return out

    def receive_vector(self, msg: Any, frm: str, tag: dict[str, int]) -> EncryptedVector:
        return EncryptedVector.from_arrow(self.session.recv(msg, frm, **tag), self.peer_keys[frm])

    # gradient parts: ask the key owners, answer the peers, add up
    def send_parts(
        self, parts: dict[str, EncryptedVector], rows: int, value_bound: float, tag: dict[str, int]
    ) -> dict[str, MaskState]:
        """Mask and pack each encrypted part and send it to its key owner; returns the masks to remove."""
        exponent = min(v.exponent for v in parts.values())
        bound = rows * self.matrix.max_abs * value_bound
        masks = {}
        for owner, part in parts.items():
            packed, mask = mask_and_pack(part.aligned(exponent), bound=bound, mask_bits=MASK_BITS)
            self.session.send(MASKED, owner, packed.to_arrow(), **tag)
            masks[owner] = mask
        return masks

    def answer_parts(self, target: str, tag: dict[str, int]) -> None:
        """Decrypt ``target``'s masked part under our key and return it with our share of the pairwise masks."""
        assert self.private_key is not None
        packed = PackedCiphertexts.from_arrow(self.session.recv(MASKED, target, **tag), self.public_key)
        slots = decrypt_packed(self.private_key, packed, workers=self.workers)
        context = f"{tag['gen']}/{tag['epoch']}/{tag['batch']}/g/{target}"
        noise = pair_masks(self.me, self.plan.decryptors(target), self.seeds, context, len(slots), self.bits)
        reply = [(v + r) % (1 << self.bits) for v, r in zip(slots, noise, strict=True)]
        self.session.send(UNMASKED, target, ints_to_arrow(reply, kind=SLOTS), **tag)

    def collect_parts(self, masks: dict[str, MaskState], tag: dict[str, int]) -> np.ndarray:
        """Our gradient's encrypted parts, summed: what the key owners returned minus our own masks."""
        replies = [ints_from_arrow(self.session.recv(UNMASKED, owner, **tag), kind=SLOTS) for owner in masks]
        check_replies(replies, self.k, self.bits)
        states = list(masks.values())
        total = sum_of_parts(replies, states, self.bits)
        return np.array([math.ldexp(v, 4 * states[0].exponent) for v in total])


def run_guest(
    session: Session,
    plan: TwoKeyPlan,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    resume: list[PartyState] | None = None,
    on_epoch: Callable[[PartyState], None] | None = None,
    interrupted: Interrupted | None = None,
) -> TrainedShard:
    """Guest role (and coordinator). ``features`` are its standardized training rows, intercept first."""
    o = plan.options
    party = _Party(
        session, plan, features, intercept=True, workers=workers, keypair=keypair, resume=resume,
        on_epoch=on_epoch, interrupted=interrupted,
    )  # fmt: skip
    s = 2.0 * np.asarray(labels, dtype=float) - 1.0

    def start() -> PartyState:
        if party.states:  # restarted: resynchronize at once, the hosts may be waiting for us
            return party.states[party.generations.resync(party.states)]
        problem = batch_size_problem(o, party.n, party.k, party.me)
        if problem:
            raise ConfigError(problem)  # local detail; the others learn only the reason code
        sizes = {h: int(one(session.recv(SETUP, h), "n_rows")) for h in plan.hosts}
        if any(v != party.n for v in sizes.values()):
            raise ProtocolError(f"parties disagree on the number of aligned training rows: {sizes}")
        party._new_generation(0)
        return party.fresh_state()

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen = state.epoch, party.generation
        optimizer = ShardOptimizer(o, party.k, intercept_index=0)
        optimizer.load_state(state.optimizer)
        w = state.weights
        loss_terms: dict[str, EncryptedVector] = {}
        plain_q = 0.0  # sum over batches of |a|^2 - 4m
        loss_bound = 0.0  # bound on |sum_b a.u_k|
        v_bound = 0.0  # bound on |sum_b v_k| = |sum_b u_k . 4d|
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            a = party.xq[rows] @ w - 2.0 * s[rows]
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
            plain_q += float(a @ a) - 4.0 * m
            loss_bound += float(np.abs(a).sum()) * LOGIT_BOUND
            v_bound += LOGIT_BOUND * (float(np.abs(a).sum()) + m * len(plan.hosts) * LOGIT_BOUND)
            g = party.xq[rows].T @ a + party.collect_parts(masks, tag)
            w = optimizer.update(w, g / (4.0 * m), epoch)
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
        losses = [*state.losses, math.log(2.0) + q / (8.0 * party.n)]
        stop = EarlyStopping.replay(o, losses)
        log.info("epoch %d: loss %.6f%s", epoch + 1, losses[-1], " (stop)" if stop else "")
        session.broadcast(STOP, plan.hosts, pa.table({"stop": [stop]}), gen=gen, epoch=epoch)
        if progress:
            progress(epoch, len(batches), losses[-1])
        return PartyState(epoch + 1, w, optimizer.state(), losses, stop)

    def finished(state: PartyState) -> bool:
        return state.stopped or state.epoch >= o.max_epochs

    state = start()
    while True:
        try:
            while not finished(state):
                state = epoch_fn(state)
                party._keep(state)
            # Stay until every host has the final decision (a restarted one may need a resync).
            for h in plan.hosts:
                session.await_done(f"lr2-g{party.generation}", h)
            break
        except Interrupted as exc:
            if exc.notice.kind != "rejoin":
                raise
            state = party.states[party.generations.resync(party.states)]
        except PeerTimeoutError:
            raise
        except TransportError as exc:
            log.warning("%s; waiting up to %.0f s for the party to come back", exc, REJOIN_WAIT)
            try:
                session.channel.recv(plan.hosts[0], "vfl/never", timeout=REJOIN_WAIT)
            except Interrupted as rejoin:
                if rejoin.notice.kind != "rejoin":
                    raise
                state = party.states[party.generations.resync(party.states)]
                continue
            raise
    return TrainedShard(state.weights, state.epoch, state.losses, state.stopped, party.generation + 1)


def run_host(
    session: Session,
    plan: TwoKeyPlan,
    features: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    resume: list[PartyState] | None = None,
    on_epoch: Callable[[PartyState], None] | None = None,
    interrupted: Interrupted | None = None,
) -> TrainedShard:
    """Host role. ``features`` are the host's standardized training rows, in the shared order."""
    o = plan.options
    party = _Party(
        session, plan, features, intercept=False, workers=workers, keypair=keypair, resume=resume,
        on_epoch=on_epoch, interrupted=interrupted,
    )  # fmt: skip
    me, others = party.me, [h for h in plan.hosts if h != party.me]

    def start() -> PartyState:
        if party.interrupted is not None:  # the guest resynchronizes while we start
            return party.states[party.generations.answer(party.interrupted, party.states)]
        if party.states:
            return party.states[party.generations.rejoin(party.states)]
        problem = batch_size_problem(o, party.n, party.k, me)
        if problem:
            raise ConfigError(problem)
        session.send(SETUP, plan.guest, pa.table({"n_rows": [party.n]}))
        party._new_generation(0)
        return party.fresh_state()

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen = state.epoch, party.generation
        optimizer = ShardOptimizer(o, party.k, intercept_index=None)
        optimizer.load_state(state.optimizer)
        w = state.weights
        v_total = 0.0  # sum over batches of u_k . 4d = w_k . g_k (before the step)
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
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
            masks = party.send_parts(parts, m, LOGIT_BOUND + 2.0, tag)
            for target in [plan.guest, *others]:
                party.answer_parts(target, tag)
            g = party.xq[rows].T @ u + party.collect_parts(masks, tag)
            v_total += float(w @ g)
            w = optimizer.update(w, g / (4.0 * m), epoch)
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
        stop = bool(one(session.recv(STOP, plan.guest, gen=gen, epoch=epoch), "stop"))
        return PartyState(epoch + 1, w, optimizer.state(), [], stop)

    state = start()
    while True:
        try:
            while not state.stopped and state.epoch < o.max_epochs:
                state = epoch_fn(state)
                party._keep(state)
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
    "mask_stream",
    "modulus_bits",
    "pair_masks",
    "run_guest",
    "run_host",
    "sum_of_parts",
]
