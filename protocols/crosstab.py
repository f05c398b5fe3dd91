"""The reusable encrypted cross-tab round (DESIGN.md §14): a guest code x a host code, two noise shares.

The host encrypts, under its own Paillier key, a packed one-hot vector of its code per aligned row; the
guest folds the rows by its own code (and raises them to its 0/1 outcome for the outcome sums), adds its
noise share and a uniform mask; the host decrypts the masked values and adds its own noise share; the
guest removes its mask (``vfl.analytics.crosstab``). Its four messages are part of the ``SEGMENT`` table
(``protocols/segment.py``), declared here as ``XT_MESSAGES``; ``{step}`` names the round.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from vfl.analytics import crosstab as ct
from vfl.analytics.dp import AudienceOptions
from vfl.crypto import PrivateKey, PublicKey, RandomnessPool, WorkerPool, ints_from_arrow, ints_to_arrow
from vfl.crypto.arrow import KIND, ciphertext_table, table_ciphertexts
from vfl.protocols.messages import FIXED, TEXT, message, one
from vfl.protocols.session import Session

XT_MESSAGES = (
    message("segment.xt-layout", "segment/{step}/xt-layout", "host", "guest",
            "the number of each host's local clusters and the cross-tab layout", rows=1, layout=TEXT),
    message("segment.xt-rows", "segment/{step}/xt-rows", "host", "guest",
            "nothing from the encrypted rows (under the host's key)", ciphertext=FIXED),
    message("segment.xt-sealed", "segment/{step}/xt-sealed", "guest", "host",
            "nothing (uniformly masked values)", ciphertext=FIXED),
    message("segment.xt-reply", "segment/{step}/xt-reply", "host", "guest",
            "the DP-noised count (and noised positive outcomes) of every (guest local cluster, "
            "host local cluster) cell", value=FIXED),
)  # fmt: skip
XT_LAYOUT, XT_ROWS, XT_SEALED, XT_REPLY = XT_MESSAGES

GUEST_CODE = "guest_cluster"
HOST_CODE = "host_cluster"
OUTCOME = "outcome"


def crosstab_options(
    guest: str, host: str, *, epsilon: float, k: int, cells: int, outcome: bool
) -> AudienceOptions:
    """Audience options of a (guest code x host code) count table, with an optional 0/1 guest metric."""
    return AudienceOptions(
        epsilon=epsilon,
        k=k,
        segments={guest: (GUEST_CODE,), host: (HOST_CODE,)},
        metrics={guest: (OUTCOME,)} if outcome else {},
        bounds={OUTCOME: (0.0, 1.0)} if outcome else {},
        max_categories=max(1, cells),
        fraction_bits=0,
    )


def crosstab_host(
    session: Session,
    guest: str,
    codes: np.ndarray,
    n_cells: int,
    options: AudienceOptions,
    keypair: tuple[PublicKey, PrivateKey],
    guest_cells: int,
    *,
    step: str,
    workers: WorkerPool | None = None,
) -> ct.Layout:
    """Host side of one cross-tab round: encrypted one-hot rows out, masked accumulators decrypted back."""
    pk, sk = keypair
    layout = ct.make_layout(
        options, guest=guest, host=session.party,
        guest_categories={GUEST_CODE: tuple(range(guest_cells))},
        host_categories={HOST_CODE: tuple(range(n_cells))},
        rows=len(codes), key_bits=pk.bits,
    )  # fmt: skip
    session.send(XT_LAYOUT, guest, pa.table({"layout": [json.dumps(layout.to_dict())]}), step=step)
    plains = ct.encode_rows(pd.DataFrame({HOST_CODE: np.asarray(codes, dtype=np.int64)}), None, layout)
    pool = RandomnessPool(sk, workers)
    pool.fill(len(plains))
    rows = ct.encrypt_rows(pk, plains, randomness=pool)
    session.send(XT_ROWS, guest, ciphertext_table(rows, pk, {KIND: b"segment.xt-rows"}), step=step)
    sealed = table_ciphertexts(session.recv(XT_SEALED, guest, step=step), pk, "segment accumulators")
    reply = ct.respond(sk, sealed, layout)
    session.send(XT_REPLY, guest, ints_to_arrow(reply), step=step)
    return layout


def crosstab_guest(
    session: Session,
    host: str,
    codes: np.ndarray,
    options: AudienceOptions,
    public_key: PublicKey,
    *,
    step: str,
    outcome: np.ndarray | None = None,
    workers: WorkerPool | None = None,
) -> ct.CrossTab:
    """Guest side: fold the host's rows by our code, seal with our noise share and a mask, decode the reply."""
    received = json.loads(one(session.recv(XT_LAYOUT, host, step=step), "layout"))
    layout = ct.verify_layout(
        received, options, guest=session.party, host=host, key_bits=public_key.bits, max_rows=len(codes)
    )
    rows = table_ciphertexts(session.recv(XT_ROWS, host, step=step), public_key, f"rows from {host!r}")
    metrics = pd.DataFrame({OUTCOME: outcome}) if outcome is not None else None
    acc = ct.fold(rows, codes, layout, public_key, guest_metrics=metrics, workers=workers)
    sealed, state = ct.seal(acc)
    session.send(
        XT_SEALED, host, ciphertext_table(sealed, public_key, {KIND: b"segment.xt-sealed"}), step=step
    )
    reply = ints_from_arrow(session.recv(XT_REPLY, host, step=step))
    return ct.decode(state, reply)
