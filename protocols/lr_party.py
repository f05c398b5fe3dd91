"""The coordinated LR protocol's message tables (``LR``, ``LR_STREAM``; documented in protocols/lr.py)
and what its guest and hosts share (``DataParty``): setup, (re)synchronization, masked decryption,
the arbiter's randomizer stream and the states kept at epoch boundaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vfl.crypto import (
    EncryptedVector,
    PublicKey,
    RandomnessPool,
    ints_from_arrow,
    mask_and_pack,
    prepare_matrix,
    randomizers_from_arrow,
)
from vfl.errors import ConfigError, PeerTimeoutError, TransportError
from vfl.optim import ShardOptimizer, initial_weights, max_rounds
from vfl.protocols.lr_common import LrPlan, PartyState, RoleContext, batch_size_problem, keep_state
from vfl.protocols.messages import BOOL, DATA_ROLES, FIXED, FLOAT, INT, Protocol, message
from vfl.protocols.session import Generations, Session
from vfl.transport.channel import Interrupted

if TYPE_CHECKING:
    from typing_extensions import Unpack

# LOGIT_BOUND (protocols/objectives.py): the a priori bound on |z| (the joint logit) used to size the
# gradient masks: masks are 40 bits wider than the largest gradient this bound allows, so even a logit
# 2**10 times larger keeps 30 bits of statistical hiding. Logits of standardized, clipped data stay far
# below it. Each model kind's bound on its residual is Objective.residual_bound.
MASK_BITS = 40

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


class DataParty:
    """What the guest and the hosts share: setup, (re)synchronization, masked decryption, state."""

    def __init__(
        self,
        session: Session,
        plan: LrPlan,
        features: np.ndarray,
        *,
        intercept: bool,
        intercept_start: float = 0.0,
        **context: Unpack[RoleContext],
    ) -> None:
        workers, resume = context.get("workers"), context.get("resume")
        self.session, self.plan, self.workers, self.on_epoch = session, plan, workers, context.get("on_epoch")
        session.uses(LR)
        self.stream = plan.options.randomizer_stream == "arbiter"
        if self.stream:
            session.uses(LR_STREAM)
        self._next_need = 0
        self.n, self.k = features.shape
        self.matrix = prepare_matrix(features, workers=workers)
        self.xq = self.matrix.dequantized  # the matrix the encrypted products really use
        self.intercept = intercept
        self.intercept_start = intercept_start  # added to the intercept's initial weight (Objective)
        self.states: dict[int, PartyState] = {s.epoch: s for s in resume or []}
        self.interrupted = context.get("interrupted")
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
        w0 = initial_weights(self.k, o, self.session.party)
        if self.intercept:
            w0[0] += self.intercept_start
        first = PartyState(0, w0, optimizer.state())
        self._keep(first)
        return first

    def _receive_key(self, generation: int) -> None:
        self.public_key = self.session.receive_key(self.plan.arbiter, generation=generation)
        self.randomness = RandomnessPool(self.public_key, self.workers)
        if self.workers is not None:
            self.workers.warm_up(self.public_key)
        self.randomness.fill(min(self.plan.options.batch_size or self.n, self.n) + self.k + 4)

    def _keep(self, state: PartyState) -> None:
        keep_state(self.states, state, self.on_epoch)

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
