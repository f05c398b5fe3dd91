"""Multi-class coordinated LR (one-vs-rest, K residuals packed per ciphertext; DESIGN.md §16): the
guest's and the hosts' batch loops and the arbiter's loss. ``run_guest``/``run_host`` of protocols/lr.py
hand a ``multiclass-lr`` job to these; the messages are those of the ``LR`` table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vfl.crypto import EncryptedVector, PrivateKey, encrypt, ints_from_arrow
from vfl.crypto.packing import PackedCiphertexts
from vfl.errors import ConfigError, CryptoError, ProtocolError
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
from vfl.optim import IterateAverage, ShardOptimizer, epoch_batches, passes
from vfl.options import TrainOptions
from vfl.protocols.lr_common import LrPlan, PartyState, Progress, TrainedShard
from vfl.protocols.lr_party import (
    CLASSES,
    CONTROL,
    KLOSS,
    MASK_BITS,
    MASKED,
    STOP,
    UNMASKED,
    WG,
    D,
    DataParty,
    U,
)
from vfl.protocols.messages import one
from vfl.protocols.objectives import LOGIT_BOUND
from vfl.protocols.session import Session

# Every party's quantized columns satisfy |q| <= 2^19 - 1 (at most 20-bit fixed point, vfl/crypto/multiexp.py),
# so one slot layout, known to all parties from the shared options, fits every party's X^T [[D]].
X_BOUND = (1 << 19) - 1


@dataclass(frozen=True)
class ClassGroups:
    """How K classes share plaintexts: G ciphertexts per row of c slots each (``layout``: ``G c`` classes,
    ``c`` per plaintext; classes ``K .. G c - 1`` are padding with zero residuals, weights and gradients).

    ``c <= (t + 1) / 2`` for the ``t`` slots a plaintext holds, because the loss of a plaintext's c classes
    needs ``2c - 1`` slot positions (:class:`DiagonalLoss`); the G group losses then add up in one
    ciphertext. So K classes take ``G = ceil(K / floor((t + 1) / 2))`` ciphertexts per row, every party's
    ``U``/``D`` message has ``G m`` rows (group by group) and its masked gradient ``G`` ciphertexts per column.
    """

    layout: SlotLayout
    n_classes: int

    @property
    def groups(self) -> int:
        return self.layout.n_plaintexts

    @property
    def per(self) -> int:
        return self.layout.slots_per_plaintext

    @property
    def group_layout(self) -> SlotLayout:
        """The layout of one plaintext (c classes): for the loss and the per-plaintext offsets."""
        return dataclasses.replace(self.layout, k_classes=self.per)

    def pad(self, a: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``(rows, K)`` as ``(rows, G c)``: the padding classes hold ``fill``."""
        extra = self.layout.k_classes - a.shape[1]
        return np.hstack([a, np.full((a.shape[0], extra), fill)]) if extra else a

    def split(self, vector: EncryptedVector, m: int) -> list[EncryptedVector]:
        """A ``G m`` message's ciphertexts, one vector per plaintext group."""
        if len(vector) != self.groups * m:
            raise ProtocolError(
                f"a packed message has {len(vector)} ciphertexts, expected {self.groups} x {m}"
            )
        return [vector[g * m : (g + 1) * m] for g in range(self.groups)]


def slot_layout(
    options: TrainOptions, n_rows: int, n_classes: int, key_bits: int, mask_bits: int = MASK_BITS
) -> ClassGroups:
    """The packing every party of a multi-class job uses (the same from the shared options and row count);
    ``mask_bits``: the statistical hiding of every masked slot (the arbiter-free topology's is wider)."""
    batch = max(len(b) for b in epoch_batches(n_rows, options, 0))  # the same sizes every epoch

    def layout(k: int) -> SlotLayout:
        return SlotLayout.for_problem(k, batch, X_BOUND, LOGIT_BOUND + 2.0, key_bits, mask_bits=mask_bits)

    try:
        top = (key_bits - 1) // layout(1).slot_bits  # the slot width does not depend on K
    except CryptoError as exc:
        raise ConfigError(f"multiclass-lr: {exc}") from None
    per = (top + 1) // 2
    groups = -(-n_classes // per)
    c = -(-n_classes // groups)
    return ClassGroups(dataclasses.replace(layout(groups * c), slots_per_plaintext=c), n_classes)


def check_multiclass(options: TrainOptions, n_rows: int, n_classes: int) -> None:
    """Refuse, before any peer is contacted, a batch size whose slots a plaintext of the key cannot hold."""
    slot_layout(options, n_rows, n_classes, options.key_bits)


def _class_optimizers(
    o: TrainOptions, k: int, state: dict[str, Any], intercept: int | None
) -> list[ShardOptimizer]:
    optimizers = []
    for saved in state["classes"]:
        opt = ShardOptimizer(o, k, intercept_index=intercept)
        opt.load_state(saved)
        optimizers.append(opt)
    return optimizers


def _step(optimizers: list[ShardOptimizer], w: np.ndarray, g: np.ndarray, at: float) -> np.ndarray:
    """One step of every class's optimizer; ``at`` is the position in passes over the rows."""
    return np.stack([opt.update(w[:, c], g[:, c], at) for c, opt in enumerate(optimizers)], axis=1)


def _trained(party: DataParty, epoch_fn: Callable[[PartyState], PartyState]) -> TrainedShard:
    final = party.run(epoch_fn)
    return TrainedShard(final.weights, final.epoch, final.losses, final.stopped, party.generation + 1)


def _packed_gradient(
    party: DataParty, groups: ClassGroups, packed: EncryptedVector, rows: np.ndarray, tag: dict[str, int]
) -> np.ndarray:
    """``X_p[rows]^T 4D`` as a (columns, K) float matrix: one multi-exponentiation per plaintext group,
    masked for the arbiter in one message (``G`` ciphertexts of ``c`` slots per column, group by group)."""
    layout = groups.layout
    outs = [
        packed_rdot(v, party.matrix, rows, randomness=party.randomness)
        for v in groups.split(packed, len(rows))
    ]
    messages, mask = layout.mask(outs, randomness=party.randomness)
    joined = PackedCiphertexts(
        messages[0].public_key, [ct for msg in messages for ct in msg.ciphertexts], layout.slot_bits,
        sum(msg.count for msg in messages), groups.per,
    )  # fmt: skip
    party.session.send(MASKED, party.plan.arbiter, joined.to_arrow(), **tag)
    slots = ints_from_arrow(party.session.recv(UNMASKED, party.plan.arbiter, **tag))
    n = messages[0].count
    if len(slots) != groups.groups * n:
        raise ProtocolError(f"the arbiter returned {len(slots)} gradient slots, expected {groups.groups * n}")
    ints = mask.unmask(
        [slots[g * n : (g + 1) * n] for g in range(groups.groups)], column_sums(party.matrix, rows)
    )
    return layout.gradient(ints, party.matrix.shifts)[:, : groups.n_classes]


def multiclass_guest(
    session: Session,
    plan: LrPlan,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    progress: Progress | None,
    **run: Any,
) -> TrainedShard:
    """Guest role of one-vs-rest multi-class LR: ``labels`` are class indices ``0..K-1``; ``run`` holds
    :class:`DataParty`'s keyword arguments (workers, resume, on_epoch, interrupted)."""
    o = plan.options
    y = np.asarray(labels).astype(np.int64)
    n_classes = int(y.max()) + 1
    signs = 2.0 * np.eye(n_classes)[y] - 1.0  # s_ic
    party = DataParty(session, plan, features, intercept=True, **run)
    party.classes = n_classes
    if not run["resume"] and run["interrupted"] is None:
        session.broadcast(CLASSES, plan.hosts, pa.table({"n_classes": [n_classes]}))
    hosts = len(plan.hosts)

    def epoch_fn(state: PartyState) -> PartyState:
        epoch, gen, pk = state.epoch, party.generation, party.public_key
        assert pk is not None and party.randomness is not None
        groups = slot_layout(o, party.n, n_classes, pk.bits)
        layout, one_group = groups.layout, groups.group_layout
        offsets = hosts * offset_packed(one_group)
        padded_signs = groups.pad(signs, 1.0)  # padding classes: residual 0, any sign
        optimizers = _class_optimizers(o, party.k, state.optimizer, 0)
        w, average = state.weights, IterateAverage()
        loss = DiagonalLoss(one_group, pk)  # the G groups' losses add up in its one slot
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
            mine = [p - offsets for p in layout.pack(groups.pad(u_g - 2.0 * signs[rows]))]
            d4 = add_packed(total, mine).rerandomize(randomness=party.randomness)
            session.broadcast(D, plan.hosts, d4.to_arrow(), **tag)
            g = _packed_gradient(party, groups, d4, rows, tag)
            party.refill(batches, b)
            # The loss: sum_c |4D_c|^2 - 4mK = sum_c (w_c.g_c - 2 s_c.4D_c) + sum_h t_h - 4mK, at 2^f.
            s_rows = padded_signs[rows].astype(np.int64)
            for part, classes in zip(groups.split(d4, m), range(groups.groups), strict=True):
                loss.add_label_terms(part, s_rows[:, list(layout.classes_in(classes))], -2)
            e = layout.residual_offset
            plain = float(np.sum(w * g)) - 4.0 * m * n_classes
            loss.add_top(int(round(plain * 2.0**layout.frac_bits)) + 2 * e * int(s_rows.sum()))
            for h in plan.hosts:
                loss.add_top(EncryptedVector.from_arrow(session.recv(WG, h, **tag), pk))
            w = _step(optimizers, w, g / (4.0 * m), passes(party.n, o, epoch))
            average.add(w)
            if progress:
                progress(epoch, b + 1, None)
        record = pa.table(
            {
                "ciphertext": pa.array([int(loss.seal(party.randomness)).to_bytes(2 * pk.key_bytes, "big")],
                                       pa.binary(2 * pk.key_bytes)),
                "slot_bits": [layout.slot_bits],
                "slot": [groups.per - 1],
                "frac_bits": [layout.frac_bits],
                "n_classes": [n_classes],
            }
        )  # fmt: skip
        session.send(KLOSS, plan.arbiter, record, gen=gen, epoch=epoch)
        control = session.recv(CONTROL, plan.arbiter, gen=gen, epoch=epoch)
        losses = [*state.losses, float(one(control, "loss"))]
        if progress:
            progress(epoch, len(batches), losses[-1])
        states, w = {"classes": [opt.state() for opt in optimizers]}, average.result(w, o)
        return PartyState(epoch + 1, w, states, losses, bool(one(control, "stop")))

    return _trained(party, epoch_fn)


def multiclass_host(
    session: Session,
    plan: LrPlan,
    features: np.ndarray,
    *,
    progress: Progress | None,
    **run: Any,
) -> TrainedShard:
    """Host role of one-vs-rest multi-class LR: K partial scores per row packed in one ciphertext."""
    o = plan.options
    party = DataParty(session, plan, features, intercept=False, **run)
    resume = run["resume"]
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
        groups = slot_layout(o, party.n, n_classes, pk.bits)
        layout = groups.layout
        optimizers = _class_optimizers(o, party.k, state.optimizer, None)
        w, average = state.weights, IterateAverage()
        batches = epoch_batches(party.n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            tag = {"gen": gen, "epoch": epoch, "batch": b}
            u = encrypt_packed(pk, layout.pack(groups.pad(party.xq[rows] @ w)), randomness=party.randomness)
            session.send(U, plan.guest, u.to_arrow(), **tag)
            d4 = EncryptedVector.from_arrow(session.recv(D, plan.guest, **tag), pk)
            g = _packed_gradient(party, groups, d4, rows, tag)
            party.refill(batches, b)
            # Its loss term sum_c u_c . 4D_c = sum_c w_c . g_c, encrypted for the arbiter's one slot.
            t = encrypt(
                pk, [float(np.sum(w * g))], exponent=-(layout.frac_bits // 4), randomness=party.randomness
            )
            session.send(WG, plan.guest, t.to_arrow(), **tag)
            w = _step(optimizers, w, g / (4.0 * m), passes(party.n, o, epoch))
            average.add(w)
            if progress:
                progress(epoch, b + 1, None)
        stop = bool(one(session.recv(STOP, plan.arbiter, gen=gen, epoch=epoch), "stop"))
        states, w = {"classes": [opt.state() for opt in optimizers]}, average.result(w, o)
        return PartyState(epoch + 1, w, states, [], stop)

    return _trained(party, epoch_fn)


def multiclass_loss(private_key: PrivateKey, record: pa.Table, n_rows: int) -> float:
    """The arbiter's side: ``K log 2 + Q / 8n`` from the one unmasked slot of the guest's loss ciphertext."""
    ct = int.from_bytes(one(record, "ciphertext"), "big")
    q = read_slot(private_key, ct, int(one(record, "slot_bits")), int(one(record, "slot")))
    k = int(one(record, "n_classes"))
    return k * math.log(2.0) + q / 2.0 ** int(one(record, "frac_bits")) / (8.0 * n_rows)
