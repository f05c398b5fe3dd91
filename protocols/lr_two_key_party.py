"""The arbiter-free LR protocol's message table (``LR_TWO_KEY``, documented in protocols/lr_two_key.py)
and what its guest and hosts share (``TwoKeyParty``): keys and pairwise seeds per generation, encryption
under one's own key, masked decryption of the peers' gradient parts, and the states kept at epoch
boundaries.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vfl.crypto import (
    EncryptedVector,
    MaskState,
    PackedCiphertexts,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    decrypt_packed,
    encrypt,
    generate_keypair,
    ints_from_arrow,
    ints_to_arrow,
    mask_and_pack,
    prepare_matrix,
)
from vfl.errors import ConfigError, ProtocolError
from vfl.optim import ShardOptimizer, initial_weights, max_rounds
from vfl.options import TrainOptions
from vfl.protocols.lr_common import Parties, PartyState, RoleContext, keep_state
from vfl.protocols.lr_two_key_masks import check_replies, modulus_bits, pair_masks, sum_of_parts
from vfl.protocols.messages import BOOL, DATA_ROLES, FIXED, INT, Protocol, message, one
from vfl.protocols.session import Generations, Session

if TYPE_CHECKING:
    from typing_extensions import Unpack


class TwoKeyContext(RoleContext, total=False):
    """A data role's keyword arguments plus a key pair to use for the first generation."""

    keypair: tuple[PublicKey, PrivateKey] | None


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
class TwoKeyPlan(Parties):
    """The parties of one arbiter-free training job and its shared options (the guest coordinates)."""

    options: TrainOptions

    @property
    def coordinator(self) -> str:
        return self.guest

    def decryptors(self, target: str) -> tuple[str, ...]:
        """Who decrypts ``target``'s encrypted gradient parts: the guest and the other hosts (for a host),
        every host (for the guest); in the parties' order."""
        return tuple(p for p in self.data_parties if p != target)


# --- the data parties ----------------------------------------------------------------------------


class TwoKeyParty:
    """What the guest and the hosts share: keys and seeds per generation, masked decryption, state."""

    def __init__(
        self, session: Session, plan: TwoKeyPlan, features: np.ndarray, *, intercept: bool,
        **context: Unpack[TwoKeyContext],
    ) -> None:  # fmt: skip
        workers, keypair = context.get("workers"), context.get("keypair")
        self.session, self.plan, self.workers = session, plan, workers
        self.on_epoch, self.progress = context.get("on_epoch"), context.get("progress")
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
        self.states: dict[int, PartyState] = {s.epoch: s for s in context.get("resume") or []}
        self.interrupted = context.get("interrupted")
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
            on_resume=self.new_generation,
        )

    @property
    def generation(self) -> int:
        return self.generations.generation

    @property
    def batch_rows(self) -> int:
        return min(self.plan.options.batch_size or self.n, self.n)

    def new_generation(self, generation: int) -> None:
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

    @property
    def rounds(self) -> int:
        """The most rounds the job runs (``max_epochs`` passes of ``loss_checks`` rounds)."""
        return max_rounds(self.n, self.plan.options)

    def fresh_state(self) -> PartyState:
        o = self.plan.options
        optimizer = ShardOptimizer(o, self.k, 0 if self.intercept else None)
        first = PartyState(0, initial_weights(self.k, o, self.me), optimizer.state())
        self.keep(first)
        return first

    def keep(self, state: PartyState) -> None:
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
