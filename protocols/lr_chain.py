"""Poisson with several hosts: the hosts' chain that forms ``[[prod_k exp(u_k)]]`` (DESIGN.md §16).

Paillier cannot multiply two ciphertexts, but it can raise one to a plaintext power: ``[[x]]^a = [[a x]]``.
So for a batch the first host encrypts ``exp(u_1)`` and sends it to the second (``lr.chain``); each next
host ``k`` raises every row's ciphertext to its own fixed-point multiplier ``round(exp(u_k,i) 16^10)``
(``vfl.models.poisson.times_exp``), re-randomizes it (so that the next party cannot divide out what it
saw) and passes it on; the last host sends the product to the guest as ``lr.expu``, and the guest
multiplies in ``exp(u_g + log exposure)`` as with one host. Every ciphertext is under the arbiter's key:
a host learns nothing from the chain. One scalar exponentiation per row per host after the first.
"""

from __future__ import annotations

import numpy as np

from vfl.crypto import EncryptedVector, PublicKey, RandomnessPool, WorkerPool, encrypt
from vfl.models.poisson import times_exp
from vfl.protocols.lr_party import BATCH, EXPU
from vfl.protocols.messages import FIXED, Protocol, message
from vfl.protocols.session import Session

LR_CHAIN = Protocol(
    "lr-chain",
    (
        message("lr.chain", BATCH + "/chain", "host", "host",
                "nothing: the product of the previous hosts' exp(partial score) per batch row, encrypted under "
                "the arbiter's key and re-randomized (poisson with several hosts)", ciphertext=FIXED),
    ),
    never={"host": ("another host's partial scores", "another host's weights")},
)  # fmt: skip
(CHAIN,) = LR_CHAIN.messages


def send_exp_chain(
    session: Session,
    hosts: tuple[str, ...],
    guest: str,
    u: np.ndarray,
    public_key: PublicKey,
    tag: dict[str, int],
    *,
    randomness: RandomnessPool | None = None,
    workers: WorkerPool | None = None,
) -> None:
    """This host's link of the chain for one batch: ``u`` is its partial predictor of the batch rows."""
    session.uses(LR_CHAIN)
    position = hosts.index(session.party)
    if position == 0:
        running = encrypt(public_key, np.exp(u), randomness=randomness, workers=workers)
    else:
        previous = EncryptedVector.from_arrow(session.recv(CHAIN, hosts[position - 1], **tag), public_key)
        running = times_exp(previous, u).rerandomize(randomness=randomness)
    if position == len(hosts) - 1:
        session.send(EXPU, guest, running.to_arrow(), **tag)
    else:
        session.send(CHAIN, hosts[position + 1], running.to_arrow(), **tag)
