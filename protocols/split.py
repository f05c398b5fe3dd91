"""The held-out split (DESIGN.md §6): the guest tells every host which aligned rows are held out.

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``split.held-out`` | guest -> host | the held-out row positions (shared order) | the held-out rows as positions; as the split is stratified, only that they have the intersection's positive rate |
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vfl.errors import ProtocolError
from vfl.protocols.messages import INT, Protocol, message
from vfl.protocols.session import Session

SPLIT = Protocol(
    "split",
    (
        message("split.held-out", "split/held-out", "guest", "host",
                "the held-out rows as positions in the shared order", row=INT),
    ),
    never={"host": ("which held-out row has which label",)},
)  # fmt: skip
(HELD_OUT,) = SPLIT.messages


def send_held_out(session: Session, hosts: tuple[str, ...], positions: np.ndarray) -> None:
    session.uses(SPLIT)
    session.broadcast(HELD_OUT, hosts, pa.table({"row": pa.array(np.asarray(positions, dtype=np.int64))}))


def receive_held_out(session: Session, guest: str, n_rows: int) -> np.ndarray:
    """The held-out positions, checked to be distinct positions of the ``n_rows`` aligned rows."""
    session.uses(SPLIT)
    rows = session.recv(HELD_OUT, guest).column("row").to_numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows or len(np.unique(rows)) != len(rows)):
        raise ProtocolError(f"party '{guest}' sent invalid held-out row positions")
    return rows
