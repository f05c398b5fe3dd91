"""Tying the shards of one model together: every data party learns the digest of every other shard.

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``shards.digest`` | data party -> data party | the SHA-256 digest of its model shard | a digest that identifies the shard (nothing of its weights) |
"""

from __future__ import annotations

import pyarrow as pa

from vfl.protocols.messages import DATA_ROLES, TEXT, Protocol, message, one
from vfl.protocols.session import Session

SHARDS = Protocol(
    "shards",
    (
        message("shards.digest", "model/digest", DATA_ROLES, DATA_ROLES,
                "the digests of the other parties' model shards (nothing of their weights)", rows=1, digest=TEXT),
    ),
)  # fmt: skip
(DIGEST,) = SHARDS.messages


def exchange_digests(session: Session, digest: str) -> dict[str, str]:
    """Send this shard's digest to the other data parties and collect theirs."""
    session.uses(SHARDS)
    others = [p for p in session.members.data_parties if p != session.party]
    session.broadcast(DIGEST, others, pa.table({"digest": [digest]}))
    return {p: str(one(session.recv(DIGEST, p), "digest")) for p in others}
