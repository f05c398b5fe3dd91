"""Joint scoring (DESIGN.md §7): hosts send partial scores, the guest adds its own and applies the sigmoid.

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
from vfl.transport import Channel

FRACTION_BITS = 24  # partial scores travel as signed 64-bit fixed point with 2**-24 resolution
REVEALS = ("sum", "partial")


@dataclass(frozen=True)
class ScoringPlan:
    """Who takes part in one scoring round, and how much the guest may see."""

    guest: str
    hosts: tuple[str, ...]
    reveal: str = "sum"
    tag: str = "predict"

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


def send_partial_scores(channel: Channel, plan: ScoringPlan, partial: np.ndarray) -> None:
    """Host side: send ``u_k = X_k w_k`` for every aligned row, masked pairwise when the plan says so."""
    me = channel.party
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
            seed_tag = f"{plan.tag}/pair-seed/{first}/{second}"
            if me == first:
                seed = secrets.token_bytes(32)
                channel.send(other, seed_tag, pa.table({"seed": pa.array([seed], pa.binary(32))}))
                words = words + _mask(seed, plan.tag, n)
            else:
                seed = channel.recv(other, seed_tag)["seed"][0].as_py()
                words = words - _mask(seed, plan.tag, n)
    channel.send(plan.guest, f"{plan.tag}/partial/{me}", pa.table({"u": pa.array(words, pa.uint64())}))


def receive_host_sum(channel: Channel, plan: ScoringPlan, n_rows: int) -> np.ndarray:
    """Guest side: ``sum_k u_k`` for every aligned row (pairwise masks cancel modulo 2**64)."""
    total = np.zeros(n_rows, dtype=np.uint64)
    for host in plan.hosts:
        table = channel.recv(host, f"{plan.tag}/partial/{host}")
        words = table["u"].to_numpy()
        if len(words) != n_rows:
            raise ProtocolError(f"host '{host}' sent {len(words)} partial scores for {n_rows} aligned rows")
        total = total + words
    return total.view(np.int64).astype(float) / 2.0**FRACTION_BITS


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def guest_scores(channel: Channel, plan: ScoringPlan, own_partial: np.ndarray) -> np.ndarray:
    """Guest side: probabilities ``sigmoid(u_g + sum_k u_k)`` for every aligned row."""
    return sigmoid(own_partial + receive_host_sum(channel, plan, len(own_partial)))
