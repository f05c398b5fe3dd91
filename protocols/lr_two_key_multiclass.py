"""Multi-class LR without an arbiter (one-vs-rest, DESIGN.md §15 and §16): the two-key protocol of
protocols/lr_two_key.py with every row's K class values packed into the slots of one plaintext.

With ``S = 2Y - 1`` (``Y`` one-hot, ``(m, K)``) the guest's part is ``A = U_g - 2S`` and ``4D = A + sum_k
U_k``. Per batch the guest sends ``[[A]]_g`` and every host ``[[U_k]]_k``, each row's K values packed into
``G`` plaintexts of ``c`` slots (:class:`~vfl.protocols.lr_multiclass.ClassGroups`, the coordinated packing
with 80-bit masks: signed values at ``2^-32`` plus the offset ``E`` per slot). Every party multiplies its
columns into each peer's packed vector (one ``packed_rdot`` per group), masks every slot with ``B + r``
(``r`` uniform in ``[0, 2^(S-1))``, so a slot never carries into its neighbour) and sends it to the key
owner, who decrypts the slots and returns each one mod ``2^T`` plus its share of the pairwise masks, slot
by slot: no carry between slots, each reply alone uniform mod ``2^T`` with two or more decryptors. The
party sums the replies, removes its masks and ``E colsum_j`` per part, and adds its plaintext part.

The loss ``Q = sum_c |4D_c|^2 - 4mK = w_g.g_g - 2 S.A - 4mK + sum_k (v_k - 2 L_k)`` with ``v_k = sum_c
w_kc.g_kc`` (host k's, from its gradient) and ``L_k = sum_c S_c.U_kc``: the guest forms ``[[L_k]]_k`` from
the packed ``[[U_k]]_k`` in one slot (:class:`~vfl.models.packing.DiagonalLoss`, the other slots masked),
adds a uniform mask to that slot and sends it as ``lr2.loss-masked``; host k adds ``v_k`` and the pairwise
host masks and returns ``lr2.loss-part``, as for the binary loss. The hosts learn K (``lr2.classes``).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from vfl.crypto import (
    EncryptedVector,
    MaskState,
    PackedCiphertexts,
    decrypt_packed,
    ints_from_arrow,
    ints_to_arrow,
)
from vfl.errors import ConfigError, ProtocolError
from vfl.models.kinds import MAX_CLASSES
from vfl.models.packing import DiagonalLoss, SlotLayout, column_sums, encrypt_packed, packed_rdot
from vfl.optim import EarlyStopping, IterateAverage, ShardOptimizer, epoch_batches, initial_weights, passes
from vfl.options import TrainOptions
from vfl.protocols.lr_common import PartyState, RoundSteps, TrainedShard
from vfl.protocols.lr_multiclass import ClassGroups, _class_optimizers, _step, slot_layout
from vfl.protocols.lr_two_key import guest_rounds, host_rounds
from vfl.protocols.lr_two_key_masks import check_replies, pair_masks, sum_of_parts
from vfl.protocols.lr_two_key_party import (
    LOSS_MASKED,
    LOSS_PART,
    MASK_BITS,
    MASKED,
    SLOTS,
    STOP,
    UNMASKED,
    A,
    TwoKeyContext,
    TwoKeyParty,
    TwoKeyPlan,
    U,
)
from vfl.protocols.messages import INT, Protocol, message, one
from vfl.protocols.objectives import two_key_objective
from vfl.protocols.session import Session

if TYPE_CHECKING:
    from typing_extensions import Unpack

LR_TWO_KEY_CLASSES = Protocol(
    "lr-two-key-multiclass",
    (
        message("lr2.classes", "lr2/classes", "guest", "host", "the number of classes of a multi-class model",
                rows=1, n_classes=INT),
    ),
    never={"host": ("labels", "scores", "the loss")},
)  # fmt: skip
(CLASSES,) = LR_TWO_KEY_CLASSES.messages


def two_key_groups(options: TrainOptions, n_rows: int, n_classes: int) -> ClassGroups:
    """The packing of an arbiter-free multi-class job: the coordinated one with the topology's 80-bit masks
    (ConfigError, before any peer is contacted, when a plaintext of the key cannot hold a slot)."""
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ConfigError(f"multiclass-lr trains 2 to {MAX_CLASSES} classes, the labels have {n_classes}")
    return slot_layout(options, n_rows, n_classes, options.key_bits, mask_bits=MASK_BITS)


def recover_sum(
    layout: SlotLayout, total: list[int], sums: list[int], parts: int, n_groups: int
) -> np.ndarray:
    """``(columns, G c)`` integer gradients from the checked sum of ``parts`` parts' slots (group, column,
    class order): every part's slots hold ``T_jc = G_jc + E colsum_j``."""
    cols, per = len(sums), layout.slots_per_plaintext
    out = np.empty((cols, n_groups * per), dtype=object)
    for g in range(n_groups):
        for j in range(cols):
            for c in range(per):
                out[j, g * per + c] = (
                    total[(g * cols + j) * per + c] - parts * layout.residual_offset * sums[j]
                )
    return out


class ClassSteps(RoundSteps):
    """:class:`RoundSteps` with one optimizer per class on a ``(columns, K)`` weight matrix."""

    def __init__(self, options: TrainOptions, state: PartyState, n_rows: int, intercept_index: int | None):
        self.options, self.epoch, self.weights = options, state.epoch, state.weights
        self.optimizers = _class_optimizers(options, state.weights.shape[0], state.optimizer, intercept_index)
        self.average = IterateAverage()
        self.batches = epoch_batches(n_rows, options, state.epoch)
        self.position = passes(n_rows, options, state.epoch)

    def step(self, gradient: np.ndarray) -> np.ndarray:
        self.weights = _step(self.optimizers, self.weights, gradient, self.position)
        self.average.add(self.weights)
        return self.weights

    def end(self, losses: list[float] | None = None, stopped: bool = False) -> PartyState:
        weights = self.average.result(self.weights, self.options)
        states = {"classes": [opt.state() for opt in self.optimizers]}
        return PartyState(self.epoch + 1, weights, states, losses or [], stopped)


class ClassParty(TwoKeyParty):
    """A data party of arbiter-free multi-class LR: packed parts instead of one value per row."""

    classes: int
    groups: ClassGroups

    def set_classes(self, n_classes: int) -> None:
        self.classes, self.groups = n_classes, two_key_groups(self.plan.options, self.n, n_classes)

    def fresh_state(self) -> PartyState:
        o, k = self.plan.options, self.k
        w0 = np.stack([initial_weights(k, o, self.me) for _ in range(self.classes)], axis=1)
        intercept = 0 if self.intercept else None
        states = [ShardOptimizer(o, k, intercept).state() for _ in range(self.classes)]
        first = PartyState(0, w0, {"classes": states})
        self.keep(first)
        return first

    def encrypt_packed_own(self, values: np.ndarray) -> EncryptedVector:
        """``[[values]]`` under our own key, each row's K values packed (``G m`` ciphertexts, group by group)."""
        assert self.own_pool is not None
        groups = self.groups
        out = encrypt_packed(
            self.public_key, groups.layout.pack(groups.pad(values)), randomness=self.own_pool
        )
        self.own_pool.fill(groups.groups * self.batch_rows)
        return out

    def send_packed_parts(
        self, parts: dict[str, EncryptedVector], rows: np.ndarray, tag: dict[str, int]
    ) -> dict[str, MaskState]:
        """``X^T [[P]]`` of every peer's packed vector, every slot masked, to its key owner; the masks kept."""
        groups = self.groups
        layout, masks = groups.layout, {}
        for owner, vector in parts.items():
            outs = [
                packed_rdot(v, self.matrix, rows, rerandomize=False) for v in groups.split(vector, len(rows))
            ]
            messages, mask = layout.mask(outs)
            cts = [ct for msg in messages for ct in msg.ciphertexts]
            count = sum(msg.count for msg in messages)
            joined = PackedCiphertexts(messages[0].public_key, cts, layout.slot_bits, count, groups.per)
            self.session.send(MASKED, owner, joined.to_arrow(), **tag)
            flat = tuple(v for group in mask.masks for column in group for v in column)
            masks[owner] = MaskState(flat, layout.slot_bound, 0, layout.slot_bits)
        return masks

    def collect_packed(
        self, masks: dict[str, MaskState], rows: np.ndarray, tag: dict[str, int]
    ) -> np.ndarray:
        """The sum of our gradient's encrypted parts, ``(columns, K)``: the replies minus our masks and offsets."""
        groups = self.groups
        replies = [ints_from_arrow(self.session.recv(UNMASKED, owner, **tag), kind=SLOTS) for owner in masks]
        check_replies(replies, groups.groups * self.k * groups.per, self.bits)
        total = sum_of_parts(replies, list(masks.values()), self.bits)
        ints = recover_sum(groups.layout, total, column_sums(self.matrix, rows), len(masks), groups.groups)
        return groups.layout.gradient(ints, self.matrix.shifts)[:, : self.classes]


def _loss_ciphertext(loss: DiagonalLoss, mask: int) -> pa.Table:
    """The sealed loss ciphertext (its one readable slot holding ``-2 L_k + mask``) as packed slots."""
    layout = loss.layout
    if loss._cross_bound >= 1 << (layout.slot_bits - 1 - MASK_BITS):
        raise ConfigError("too many batches per round for the multi-class loss slots; use larger batches")
    loss.add_top(mask)
    ct = loss.seal()
    return PackedCiphertexts(
        loss.public_key, [ct], layout.slot_bits, loss.positions, loss.positions
    ).to_arrow()


def run_guest(
    session: Session, plan: TwoKeyPlan, features: np.ndarray, labels: np.ndarray,
    **context: Unpack[TwoKeyContext],
) -> TrainedShard:  # fmt: skip
    """Guest role of arbiter-free one-vs-rest LR: ``labels`` are class indices ``0..K-1``."""
    o, obj = plan.options, two_key_objective(plan.options)
    y = np.asarray(labels).astype(np.int64)
    n_classes = int(y.max()) + 1
    session.uses(LR_TWO_KEY_CLASSES)
    groups = two_key_groups(o, len(y), n_classes)  # refused here, before any peer is contacted
    party = ClassParty(session, plan, features, intercept=True, **context)
    party.set_classes(n_classes)
    signs = 2.0 * np.eye(n_classes)[y] - 1.0
    padded = groups.pad(signs, 1.0).astype(np.int64)  # padding classes: residual 0, any sign
    layout, progress, scale = groups.layout, party.progress, 2.0**groups.layout.frac_bits

    def announce() -> None:
        session.broadcast(CLASSES, plan.hosts, pa.table({"n_classes": [n_classes]}))

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen = state.epoch, party.generation
        steps = ClassSteps(o, state, party.n, intercept_index=0)
        losses = {h: DiagonalLoss(groups.group_layout, party.peer_keys[h]) for h in plan.hosts}
        plain_q, fix = 0.0, 0  # the guest's part of Q; the slot offsets E in the hosts' label terms
        for b, rows in enumerate(steps.batches):
            m, w = len(rows), steps.weights
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            a = party.xq[rows] @ w - obj.target_scale * signs[rows]  # (m, K)
            session.broadcast(A, plan.hosts, party.encrypt_packed_own(a).to_arrow(), **tag)
            parts = {h: party.receive_vector(U, h, tag) for h in plan.hosts}
            for h, u_h in parts.items():
                for g, part in enumerate(groups.split(u_h, m)):
                    losses[h].add_label_terms(part, padded[rows][:, list(layout.classes_in(g))], -2)
            masks = party.send_packed_parts(parts, rows, tag)
            for h in plan.hosts:
                party.answer_parts(h, tag)
            g = party.xq[rows].T @ a + party.collect_packed(masks, rows, tag)
            plain_q += float(np.sum(w * g)) - 2.0 * float(np.sum(signs[rows] * a)) - 4.0 * m * n_classes
            fix += 2 * layout.residual_offset * int(padded[rows].sum())
            steps.step(g / obj.gradient_divisor(m))
            if progress:
                progress(epoch, b + 1, None)
        top = groups.group_layout.slot_bits - 2
        loss_masks = []
        for h in plan.hosts:
            mask = secrets.randbelow(1 << top)
            session.send(LOSS_MASKED, h, _loss_ciphertext(losses[h], fix + mask), gen=gen, epoch=epoch)
            loss_masks.append(MaskState((mask,), 1 << top, 0, party.bits))
        replies = [
            ints_from_arrow(session.recv(LOSS_PART, h, gen=gen, epoch=epoch), kind=SLOTS) for h in plan.hosts
        ]
        check_replies(replies, 1, party.bits)
        t = sum_of_parts(replies, loss_masks, party.bits)[0]
        q = plain_q + t / scale
        history = [*state.losses, n_classes * np.log(2.0) + q / (8.0 * steps.rows)]
        stop = EarlyStopping.replay(o, history)
        session.broadcast(STOP, plan.hosts, pa.table({"stop": [stop]}), gen=gen, epoch=epoch)
        if progress:
            progress(epoch, len(steps.batches), history[-1])
        return steps.end(history, stop)

    return guest_rounds(session, plan, party, epoch_fn, on_start=announce)


def run_host(
    session: Session, plan: TwoKeyPlan, features: np.ndarray, **context: Unpack[TwoKeyContext]
) -> TrainedShard:
    """Host role of arbiter-free one-vs-rest LR: its K partial scores per row packed under its own key."""
    o, obj = plan.options, two_key_objective(plan.options)
    session.uses(LR_TWO_KEY_CLASSES)
    party = ClassParty(session, plan, features, intercept=False, **context)
    others, progress = [h for h in plan.hosts if h != party.me], party.progress
    resume = context.get("resume")
    if resume:
        party.set_classes(int(np.asarray(resume[0].weights).shape[1]))

    def learn() -> None:
        n_classes = int(one(session.recv(CLASSES, plan.guest), "n_classes"))
        if not 2 <= n_classes <= MAX_CLASSES:
            raise ProtocolError(f"party '{plan.guest}' announced {n_classes} classes (2..{MAX_CLASSES})")
        party.set_classes(n_classes)

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen = state.epoch, party.generation
        steps = ClassSteps(o, state, party.n, intercept_index=None)
        v_total = 0.0  # sum over batches of sum_c w_c . g_c (before the step)
        for b, rows in enumerate(steps.batches):
            m, w = len(rows), steps.weights
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u = party.xq[rows] @ w
            session.broadcast(U, [plan.guest, *others], party.encrypt_packed_own(u).to_arrow(), **tag)
            parts = {plan.guest: party.receive_vector(A, plan.guest, tag)}
            parts.update({j: party.receive_vector(U, j, tag) for j in others})
            masks = party.send_packed_parts(parts, rows, tag)
            for target in [plan.guest, *others]:
                party.answer_parts(target, tag)
            g = party.xq[rows].T @ u + party.collect_packed(masks, rows, tag)
            v_total += float(np.sum(w * g))
            steps.step(g / obj.gradient_divisor(m))
            if progress:
                progress(epoch, b + 1, None)
        reply = _loss_reply(party, gen, epoch, v_total)
        session.send(LOSS_PART, plan.guest, ints_to_arrow([reply], kind=SLOTS), gen=gen, epoch=epoch)
        return steps.end(stopped=bool(one(session.recv(STOP, plan.guest, gen=gen, epoch=epoch), "stop")))

    return host_rounds(session, plan, party, epoch_fn, on_start=learn)


def _loss_reply(party: ClassParty, gen: int, epoch: int, v_total: float) -> int:
    """Decrypt the guest's masked label term (its one readable slot), add ``v_k`` and the host masks."""
    assert party.private_key is not None
    plan, one_group = party.plan, party.groups.group_layout
    table = party.session.recv(LOSS_MASKED, plan.guest, gen=gen, epoch=epoch)
    packed = PackedCiphertexts.from_arrow(table, party.public_key)
    slots = decrypt_packed(party.private_key, packed)
    positions = 2 * one_group.k_classes - 1
    if len(slots) != positions or packed.slot_bits != one_group.slot_bits:
        raise ProtocolError(f"party '{plan.guest}' sent a loss term of {len(slots)} slots, not {positions}")
    value = slots[one_group.k_classes - 1] - (1 << (one_group.slot_bits - 2))
    noise = pair_masks(party.me, plan.hosts, party.seeds, f"{gen}/{epoch}/loss", 1, party.bits)[0]
    own = round(v_total * 2.0**one_group.frac_bits)
    return (value + own + noise) % (1 << party.bits)


__all__ = ["LR_TWO_KEY_CLASSES", "run_guest", "run_host", "two_key_groups"]
