"""Joint scoring (DESIGN.md §7): hosts send partial scores, the guest adds its own and applies the sigmoid.

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``predict.pair-seed`` | host -> host | a fresh 32-byte seed for one pair of hosts | nothing about any data |
| ``predict.partial`` | host -> guest | ``u_k`` per aligned row, masked when the plan says so (64-bit fixed point) | the sum of the hosts' partial scores (one host's own when it is the only host, or with ``reveal="partial"``) |

With ``reveal="sum"`` and two or more hosts, every pair of hosts shares a fresh secret seed and each
host adds (or subtracts) a pseudo-random mask derived from it to its fixed-point partial score, modulo
2**64. The masks cancel exactly in the sum, so the guest learns ``sum_k u_k`` and never one host's
``u_k``. With a single host the guest can always derive ``u_k`` from its own score; the ledger says so.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vfl.errors import ConfigError, ProtocolError
from vfl.protocols.messages import FIXED, WORDS, Protocol, message, one
from vfl.protocols.session import Session

PREDICT = Protocol(
    "predict",
    (
        message("predict.pair-seed", "{stage}/pair-seed/{first}/{second}", "host", "host",
                "a fresh random seed shared with one other host (for masks that cancel in the sum)",
                rows=1, seed=FIXED),
        message("predict.partial", "{stage}/partial/{host}", "host", "guest",
                "the sum of the hosts' partial scores of the aligned rows (a single host's own partial "
                "scores when it is the only host, or with reveal = partial)", u=WORDS),
    ),
    never={
        "guest": ("any host column or weight",),
        "host": ("the scores", "the labels", "another host's partial scores"),
    },
)  # fmt: skip
PAIR_SEED, PARTIAL = PREDICT.messages

FRACTION_BITS = 24  # partial scores travel as signed 64-bit fixed point with 2**-24 resolution
REVEALS = ("sum", "partial")


@dataclass(frozen=True)
class ScoringPlan:
    """Who takes part in one scoring round, and how much the guest may see."""

    guest: str
    hosts: tuple[str, ...]
    reveal: str = "sum"
    stage: str = "predict"  # names the scoring round in the tags ("train-score" after training)

    def __post_init__(self) -> None:
        if self.reveal not in REVEALS:
            raise ConfigError(f"reveal must be one of {', '.join(REVEALS)}, got {self.reveal!r}")

    @property
    def masked(self) -> bool:
        return self.reveal == "sum" and len(self.hosts) >= 2


def _to_fixed(values: np.ndarray) -> np.ndarray:
    scaled = np.round(np.asarray(values, dtype=float) * 2.0**FRACTION_BITS)
    if not np.all(np.abs(scaled) < 2.0**62):
        raise ProtocolError(
            "a partial score is too large to encode (|score| >= 2**38); check the model's weights"
        )
    return scaled.astype(np.int64).view(np.uint64)


def _mask(seed: bytes, tag: str, n: int) -> np.ndarray:
    """n uniform 64-bit words from SHAKE-256 (a cryptographic stream, unlike numpy's generators)."""
    stream = hashlib.shake_256(b"vfl/predict/mask/v1|" + tag.encode() + b"|" + seed).digest(8 * n)
    return np.frombuffer(stream, dtype="<u8", count=n).astype(np.uint64)


def send_partial_scores(session: Session, plan: ScoringPlan, partial: np.ndarray) -> None:
    """Host side: send ``u_k = X_k w_k`` for every aligned row, masked pairwise when the plan says so."""
    session.uses(PREDICT)
    me = session.party
    if me not in plan.hosts:
        raise ConfigError(f"party '{me}' is not a host of this scoring round ({', '.join(plan.hosts)})")
    words = _to_fixed(partial)
    if plan.masked:
        n = len(words)
        for other in plan.hosts:
            if other == me:
                continue
            # The host earlier in the list draws the pair's seed and adds; the later one subtracts.
            first, second = sorted((me, other), key=plan.hosts.index)
            pair = {"stage": plan.stage, "first": first, "second": second}
            if me == first:
                seed = secrets.token_bytes(32)
                session.send(PAIR_SEED, other, pa.table({"seed": pa.array([seed], pa.binary(32))}), **pair)
                words = words + _mask(seed, plan.stage, n)
            else:
                seed = one(session.recv(PAIR_SEED, other, **pair), "seed")
                if len(seed) != 32:
                    raise ProtocolError(f"host '{other}' sent a pair seed of {len(seed)} bytes, not 32")
                words = words - _mask(seed, plan.stage, n)
    session.send(
        PARTIAL, plan.guest, pa.table({"u": pa.array(words, pa.uint64())}), stage=plan.stage, host=me
    )


def receive_host_sum(session: Session, plan: ScoringPlan, n_rows: int) -> np.ndarray:
    """Guest side: ``sum_k u_k`` for every aligned row (pairwise masks cancel modulo 2**64)."""
    session.uses(PREDICT)
    total = np.zeros(n_rows, dtype=np.uint64)
    for host in plan.hosts:
        table = session.recv(PARTIAL, host, stage=plan.stage, host=host)
        words = table["u"].to_numpy()
        if len(words) != n_rows:
            raise ProtocolError(f"host '{host}' sent {len(words)} partial scores for {n_rows} aligned rows")
        total = total + words
    return total.view(np.int64).astype(float) / 2.0**FRACTION_BITS


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def guest_scores(session: Session, plan: ScoringPlan, own_partial: np.ndarray) -> np.ndarray:
    """Guest side: probabilities ``sigmoid(u_g + sum_k u_k)`` for every aligned row."""
    return sigmoid(joint_logits(session, plan, own_partial))


def joint_logits(session: Session, plan: ScoringPlan, own_partial: np.ndarray) -> np.ndarray:
    """Guest side: ``z = u_g + sum_k u_k`` for every aligned row (what calibration and metrics start from)."""
    return own_partial + receive_host_sum(session, plan, len(own_partial))


def _class_plan(plan: ScoringPlan, c: int) -> ScoringPlan:
    return ScoringPlan(plan.guest, plan.hosts, plan.reveal, stage=f"{plan.stage}-c{c}")


def send_partial_matrix(session: Session, plan: ScoringPlan, partial: np.ndarray) -> None:
    """Host side for any model kind: one round per column of a multi-class model's ``(rows, K)`` scores."""
    partial = np.asarray(partial)
    if partial.ndim == 1:
        send_partial_scores(session, plan, partial)
        return
    for c in range(partial.shape[1]):
        send_partial_scores(session, _class_plan(plan, c), partial[:, c])


def joint_logit_matrix(session: Session, plan: ScoringPlan, own_partial: np.ndarray) -> np.ndarray:
    """Guest side for any model kind: ``z`` per row, or ``(rows, K)`` per class (masked sums as for binary)."""
    own = np.asarray(own_partial)
    if own.ndim == 1:
        return joint_logits(session, plan, own)
    return np.column_stack(
        [joint_logits(session, _class_plan(plan, c), own[:, c]) for c in range(own.shape[1])]
    )
