"""The pure pieces of arbiter-free LR (protocols/lr_two_key.py): pairwise masks that cancel over the
decryptors, and the checked sum of masked parts. No I/O; the protocol module re-exports them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from vfl.crypto import MaskState
from vfl.errors import IntegrityError

EXTRA_BITS = 64  # T = key_bits + EXTRA_BITS: the modulus of the replies (no slot sum ever reaches it)


def modulus_bits(key_bits: int) -> int:
    """``T``: replies travel mod ``2^T``, wide enough for any sum of slots of a ``key_bits`` key."""
    return key_bits + EXTRA_BITS


def mask_stream(seed: bytes, context: str, count: int, bits: int) -> list[int]:
    """``count`` uniform integers mod ``2^bits`` from SHAKE-256 of the pair's seed and the context."""
    width = (bits + 7) // 8
    stream = hashlib.shake_256(b"vfl/lr2/mask/v1|" + context.encode() + b"|" + seed).digest(width * count)
    top = (1 << bits) - 1
    return [int.from_bytes(stream[i * width : (i + 1) * width], "big") & top for i in range(count)]


def pair_masks(
    me: str, among: Sequence[str], seeds: Mapping[str, bytes], context: str, count: int, bits: int
) -> list[int]:
    """My share of masks that cancel over ``among`` (mod ``2^bits``): ``+stream`` towards every later
    party, ``-stream`` towards every earlier one, each stream from the seed that pair shares."""
    modulus = 1 << bits
    total = [0] * count
    position = list(among).index(me)
    for i, peer in enumerate(among):
        if peer == me:
            continue
        sign = 1 if position < i else -1
        for j, value in enumerate(mask_stream(seeds[peer], context, count, bits)):
            total[j] += sign * value
    return [t % modulus for t in total]


def sum_of_parts(
    replies: Sequence[Sequence[int]], masks: Sequence[MaskState], bits: int, *, extra_bound: int = 0
) -> list[int]:
    """The signed sum of the parts: ``sum replies - sum own masks`` mod ``2^bits``, then checked
    against the sum of the parts' bounds plus ``extra_bound`` (what the repliers added in plaintext):
    a reply that was altered fails here."""
    if not replies or len(replies) != len(masks):
        raise IntegrityError(f"expected {len(masks)} replies, got {len(replies)}")
    count = len(masks[0].masks)
    modulus, half = 1 << bits, 1 << (bits - 1)
    bound = sum(m.bound for m in masks) + extra_bound
    out = []
    for j in range(count):
        total = sum(int(r[j]) for r in replies) - sum(m.masks[j] for m in masks)
        total %= modulus
        if total >= half:
            total -= modulus
        if abs(total) > bound:
            raise IntegrityError("a gradient sums to a value beyond its bound: a reply was altered")
        out.append(total)
    return out


def check_replies(replies: Sequence[Sequence[int]], count: int, bits: int) -> None:
    for r in replies:
        if len(r) != count or any(not 0 <= int(v) < (1 << bits) for v in r):
            raise IntegrityError(f"a masked reply does not hold {count} values below 2^{bits}")
