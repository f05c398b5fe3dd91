"""Coordinated vertical logistic regression (DESIGN.md §6): Hardy et al. 2017 with masks.

One function per role, speaking only through a ``Channel``. Per mini-batch ``B`` of ``m`` rows, with
``s = 2y - 1`` and ``[[.]]`` Paillier encryption under the arbiter's key:

1. each host sends ``[[u_k]] = [[X_k[B] w_k]]`` to the guest;
2. the guest forms ``[[4d]] = [[z]] - 2s`` with ``z = u_g + sum_k u_k`` (the Taylor residual
   ``d = z/4 - s/2``, scaled by 4 so no division happens under encryption) and sends it to every host;
3. every data party computes ``[[X_p[B]^T 4d]]`` by multi-exponentiation, masks every value with
   fresh uniform randomness 40+ bits wider than the value, packs, and sends it to the arbiter;
4. the arbiter decrypts the masked slots and returns them; the party unmasks and divides by ``4m``;
5. every party steps its own optimizer on its own weights.

The loss needs no cross-host product: each host also sends ``[[w_k . g_k]] = [[u_k . 4d]]`` from its
encrypted gradient, so the guest gets ``[[u_k . z]] = [[w_k . g_k]] + 2 [[s . u_k]]`` and from it
``[[sum z^2]]``. The guest accumulates ``[[Q]] = [[sum z^2]] - 4 [[sum s z]]`` over the epoch; the
arbiter decrypts that one number, computes ``loss = log 2 + Q / (8 n)``, decides whether to stop and
tells everyone. The arbiter never sees a gradient, weight, per-row value or label.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vfl.crypto import (
    EncryptedVector,
    PackedCiphertexts,
    PreparedMatrix,
    PrivateKey,
    PublicKey,
    WorkerPool,
    generate_keypair,
    ints_from_arrow,
    ints_to_arrow,
    mask_and_pack,
    prepare_matrix,
)
from vfl.errors import ConfigError, ProtocolError
from vfl.optim import EarlyStopping, ShardOptimizer, epoch_batches, initial_weights
from vfl.options import TrainOptions
from vfl.transport import Channel

log = logging.getLogger(__name__)

# A priori bound on |z| (the joint logit) used to size the gradient masks: masks are 40 bits wider
# than the largest gradient this bound allows, so even a logit 2**10 times larger keeps 30 bits of
# statistical hiding. Logits of standardized, clipped data stay far below it.
LOGIT_BOUND = 2.0**16
MASK_BITS = 40

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
class TrainedShard:
    """What training leaves at a data party: its own weights and how training went."""

    weights: np.ndarray
    epochs: int
    losses: list[float] = field(default_factory=list)  # known at the guest (and the arbiter) only
    stopped_early: bool = False


@dataclass
class ArbiterSummary:
    """What the arbiter learned: the loss per epoch, and nothing per row."""

    losses: list[float]
    epochs: int
    stopped_early: bool
    public_key_fingerprint: str


def _tag(epoch: int, batch: int, what: str) -> str:
    return f"lr/e{epoch}/b{batch}/{what}"


def _status(ok: bool, reason: str = "") -> pa.Table:
    return pa.table({"ok": [ok], "reason": [reason]})


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


def _hello(channel: Channel, plan: LrPlan, n_rows: int, n_columns: int) -> PublicKey:
    """Tell the arbiter our settings and sizes; get the public key back, or the reason the job cannot start."""
    problem = _check_batch_size(plan.options, n_rows, n_columns, channel.party)
    channel.send(plan.arbiter, "lr/hello", _hello_table(plan, n_rows, problem))
    status = channel.recv(plan.arbiter, "lr/status")
    if not status["ok"][0].as_py():
        raise ProtocolError(status["reason"][0].as_py())
    return PublicKey.from_arrow(channel.recv(plan.arbiter, "lr/public-key"))


def _masked_decrypt(
    channel: Channel, plan: LrPlan, gradient: EncryptedVector, bound: float, tag: str
) -> np.ndarray:
    """Decrypt ``gradient`` with the arbiter's help: it sees only masked, packed slots."""
    packed, mask = mask_and_pack(gradient, bound=bound, mask_bits=MASK_BITS)
    channel.send(plan.arbiter, f"{tag}/masked", packed.to_arrow())
    return mask.unmask(ints_from_arrow(channel.recv(plan.arbiter, f"{tag}/unmasked")))


def _gradient_bound(rows: int, matrix: PreparedMatrix) -> float:
    return rows * matrix.max_abs * (LOGIT_BOUND + 2.0)


def _control(channel: Channel, plan: LrPlan, epoch: int) -> tuple[bool, float | None]:
    table = channel.recv(plan.arbiter, f"lr/e{epoch}/control")
    loss = table["loss"][0].as_py() if "loss" in table.column_names else None
    return bool(table["stop"][0].as_py()), loss


def run_guest(
    channel: Channel,
    plan: LrPlan,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
) -> TrainedShard:
    """Guest role. ``features`` are the guest's standardized training rows with the intercept column first."""
    o = plan.options
    n, k = features.shape
    public_key = _hello(channel, plan, n, k)
    matrix = prepare_matrix(features, workers=workers)
    xq = matrix.dequantized
    s = 2.0 * np.asarray(labels, dtype=float) - 1.0
    w = initial_weights(k, o, channel.party)
    optimizer = ShardOptimizer(o, k, intercept_index=0)
    losses: list[float] = []
    stopped = False
    epoch = 0
    for epoch in range(o.max_epochs):
        q_total: EncryptedVector | None = None
        batches = epoch_batches(n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            u_g = xq[rows] @ w
            host_u = {
                h: EncryptedVector.from_arrow(channel.recv(h, _tag(epoch, b, "u")), public_key)
                for h in plan.hosts
            }
            z = _sum(list(host_u.values())) + u_g
            # Fresh randomness before it leaves: a host could otherwise divide out its own [[u_k]].
            d4 = (z - 2.0 * s[rows]).rerandomize(workers=workers)
            for h in plan.hosts:
                channel.send(h, _tag(epoch, b, "d"), d4.to_arrow())
            gradient = d4.rdot(matrix, rows=rows, workers=workers)
            # Encrypted Taylor-loss terms of this batch: Q_b = sum z^2 - 4 sum s z.
            # u_k . z = w_k . g_k + 2 s . u_k, and s . z = s . u_g + sum_k s . u_k.
            q_b = _encrypted_dot(z, u_g, workers) - 4.0 * float(s[rows] @ u_g)
            for h, u_h in host_u.items():
                s_uh = _encrypted_dot(u_h, s[rows], workers)
                wg = EncryptedVector.from_arrow(channel.recv(h, _tag(epoch, b, "wg")), public_key)
                q_b = q_b + wg - s_uh * 2
            q_total = q_b if q_total is None else q_total + q_b
            g = _masked_decrypt(channel, plan, gradient, _gradient_bound(m, matrix), _tag(epoch, b, "g"))
            w = optimizer.update(w, g / (4.0 * m), epoch)
            if progress:
                progress(epoch, b + 1, None)
        assert q_total is not None
        channel.send(plan.arbiter, f"lr/e{epoch}/loss", q_total.to_arrow())
        stopped, loss = _control(channel, plan, epoch)
        losses.append(float(loss) if loss is not None else math.nan)
        if progress:
            progress(epoch, len(batches), losses[-1])
        if stopped:
            break
    return TrainedShard(w, epoch + 1, losses, stopped)


def _encrypted_dot(vector: EncryptedVector, x: np.ndarray, workers: WorkerPool | None) -> EncryptedVector:
    """``[[x . v]]`` by one-column multi-exponentiation (~1 modmul per row; only the loss uses it)."""
    return vector.rdot(x[:, None], workers=workers, rerandomize=False)


def _sum(vectors: list[EncryptedVector]) -> EncryptedVector:
    total = vectors[0]
    for v in vectors[1:]:
        total = total + v
    return total


def run_host(
    channel: Channel,
    plan: LrPlan,
    features: np.ndarray,
    *,
    workers: WorkerPool | None = None,
    progress: Progress | None = None,
) -> TrainedShard:
    """Host role. ``features`` are the host's standardized training rows, in the shared order."""
    o = plan.options
    n, k = features.shape
    public_key = _hello(channel, plan, n, k)
    matrix = prepare_matrix(features, workers=workers)
    xq = matrix.dequantized
    w = initial_weights(k, o, channel.party)
    optimizer = ShardOptimizer(o, k, intercept_index=None)
    stopped = False
    epoch = 0
    for epoch in range(o.max_epochs):
        batches = epoch_batches(n, o, epoch)
        for b, rows in enumerate(batches):
            m = len(rows)
            channel.send(
                plan.guest, _tag(epoch, b, "u"), public_key.encrypt(xq[rows] @ w, workers=workers).to_arrow()
            )
            d4 = EncryptedVector.from_arrow(channel.recv(plan.guest, _tag(epoch, b, "d")), public_key)
            gradient = d4.rdot(matrix, rows=rows, workers=workers)
            channel.send(plan.guest, _tag(epoch, b, "wg"), gradient.dot(w).rerandomize().to_arrow())
            g = _masked_decrypt(channel, plan, gradient, _gradient_bound(m, matrix), _tag(epoch, b, "g"))
            w = optimizer.update(w, g / (4.0 * m), epoch)
            if progress:
                progress(epoch, b + 1, None)
        stopped, _ = _control(channel, plan, epoch)
        if stopped:
            break
    return TrainedShard(w, epoch + 1, [], stopped)


def run_arbiter(
    channel: Channel,
    plan: LrPlan,
    *,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    workers: WorkerPool | None = None,
) -> ArbiterSummary:
    """Arbiter role: hold the private key, check that every party runs the same job, decrypt masked values."""
    o = plan.options
    hellos = {p: channel.recv(p, "lr/hello") for p in plan.data_parties}
    reason = _agreement_problem(plan, hellos)
    for p in plan.data_parties:
        channel.send(p, "lr/status", _status(reason is None, reason or ""))
    if reason is not None:
        raise ProtocolError(reason)
    public_key, private_key = keypair or generate_keypair(o.key_bits)
    for p in plan.data_parties:
        channel.send(p, "lr/public-key", public_key.to_arrow())
    n = int(hellos[plan.guest]["n_rows"][0].as_py())
    stopper = EarlyStopping(o)
    losses: list[float] = []
    stopped = False
    epoch = 0
    for epoch in range(o.max_epochs):
        for b, _rows in enumerate(epoch_batches(n, o, epoch)):
            for p in plan.data_parties:
                tag = _tag(epoch, b, "g")
                packed = PackedCiphertexts.from_arrow(channel.recv(p, f"{tag}/masked"), public_key)
                channel.send(
                    p, f"{tag}/unmasked", ints_to_arrow(private_key.decrypt_packed(packed, workers=workers))
                )
        q = EncryptedVector.from_arrow(channel.recv(plan.guest, f"lr/e{epoch}/loss"), public_key)
        loss = math.log(2.0) + float(private_key.decrypt(q)[0]) / (8.0 * n)
        losses.append(loss)
        stopped = stopper.should_stop(loss)
        log.info("epoch %d: loss %.6f%s", epoch + 1, loss, " (stop)" if stopped else "")
        channel.send(plan.guest, f"lr/e{epoch}/control", pa.table({"stop": [stopped], "loss": [loss]}))
        for h in plan.hosts:
            channel.send(h, f"lr/e{epoch}/control", pa.table({"stop": [stopped]}))
        if stopped:
            break
    return ArbiterSummary(losses, epoch + 1, stopped, public_key.fingerprint)


def _agreement_problem(plan: LrPlan, hellos: dict[str, pa.Table]) -> str | None:
    """Why the parties cannot train together, or None: different options, row counts, or a party's own check."""
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
