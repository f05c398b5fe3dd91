"""Joint audience analytics (DESIGN.md §13): noised cross-tabs of shared customers, guest x each host.

For every host ``h`` the parties first run the PSI (``psi`` protocol, tag prefix ``audience-psi``;
the pairwise intersection guest ∩ h, so every host gets its own table). Then, under the **host's**
Paillier key (``[[.]]``), with the mechanisms of :mod:`vfl.analytics.crosstab`:

1. the guest tells the host its segment columns' categories (``audience.cells``);
2. the host builds the slot layout (its own categories, its metrics, the row count, the epsilon of
   every released number, the slot width) and sends it (``audience.layout``), then one (or a few)
   ciphertext(s) per shared row, in the shared order: the row's one-hot host cell and its clipped
   metric values, packed in slots (``audience.rows``), encrypted on the key owner's CRT path;
3. the guest folds every row into its own cell's accumulator (one modular multiplication per row),
   raises rows to its own metric values for guest-metric sums, adds its **own full-strength noise
   share** and a uniform mask under encryption, re-randomizes (``audience.sealed``);
4. the host decrypts (a uniform value: it learns nothing), adds **its own full-strength noise
   share** and replies (``audience.reply``);
5. the guest removes its mask: ``value + Z_guest + Z_host``. It knows ``Z_guest`` but not
   ``Z_host``, so what it sees is an epsilon-DP release. It withholds every cell whose noised count
   is below ``k`` and sends the released table to the host (``audience.release``); the host knows
   ``Z_host`` but not ``Z_guest``, so its view too is an epsilon-DP release. No party knows the
   noise in what it sees.

Message table (``AUDIENCE``; ``{host}`` names the host; the host's public key travels as the
session's ``session.public-key``):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``audience.cells`` | guest -> host | the guest's segment columns and their categories | the guest's segment categories (declared, or those that occur in its data) |
| ``audience.layout`` | host -> guest | the slot layout (host categories, metric names and bounds, rows, epsilon per number), number of row parts | the host's segment categories and metric names, the row count (= the intersection size it already knows) |
| ``audience.rows`` | host -> guest | ``[[one-hot cell + metrics]]`` per shared row | nothing (encrypted under the host's key) |
| ``audience.sealed`` | guest -> host | per guest cell ``[[acc + Z_guest + R]]``, ``R`` uniform | nothing (it decrypts uniformly masked values) |
| ``audience.reply`` | host -> guest | ``acc + Z_guest + R + Z_host`` | the cross-tab with the host's noise share, which it does not know |
| ``audience.release`` | guest -> host | the released cross-tab (cells below ``k`` withheld) | the released cross-tab with the guest's noise share, which it does not know |

Nothing here reads a file or a config; the role runtime (``vfl.parties.audience``) does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from gmpy2 import mpz

from vfl.analytics import crosstab as ct
from vfl.analytics.dp import AudienceOptions
from vfl.crypto import PrivateKey, PublicKey, WorkerPool
from vfl.errors import ProtocolError
from vfl.protocols.messages import FIXED, INT, TEXT, Protocol, message, one
from vfl.protocols.session import Session

log = logging.getLogger(__name__)

ROWS_PER_PART = 1 << 16  # ciphertexts per audience.rows message (32 MiB at 2048 bits)
PSI_TAG = "audience-psi"

AUDIENCE = Protocol(
    "audience",
    (
        message("audience.cells", "audience/{host}/cells", "guest", "host",
                "the guest's segment columns and their categories", rows=1, categories=TEXT),
        message("audience.layout", "audience/{host}/layout", "host", "guest",
                "the host's segment categories, metric names and bounds, and the number of shared rows "
                "(the slot layout: no per-row value)", rows=1, layout=TEXT, parts=INT),
        message("audience.rows", "audience/{host}/rows/{part}", "host", "guest",
                "nothing: each shared row's host cell and metrics, encrypted under the host's key",
                ciphertext=FIXED),
        message("audience.sealed", "audience/{host}/sealed", "guest", "host",
                "nothing: per guest cell sums plus the guest's noise share, uniformly masked before decryption",
                ciphertext=FIXED),
        message("audience.reply", "audience/{host}/reply", "host", "guest",
                "the cross-tab (counts and clipped sums by guest cell x host cell) with the host's "
                "discrete Laplace noise share, which the guest does not know", value=FIXED),
        message("audience.release", "audience/{host}/release", "guest", "host",
                "the released cross-tab (cells with a noised count below k withheld) with the guest's "
                "discrete Laplace noise share, which the host does not know", rows=1, table=TEXT),
    ),
    never={
        "guest": ("any host id outside the intersection", "any host per-row segment or metric value",
                  "the host's noise share"),
        "host": ("any guest per-row segment or metric value", "the guest's cells of any row",
                 "the guest's noise share", "suppressed cells"),
    },
)  # fmt: skip
CELLS, LAYOUT, ROWS, SEALED, REPLY, RELEASE = AUDIENCE.messages


# --- wire helpers ---------------------------------------------------------------------------------


def _cipher_table(values: Sequence[mpz], public_key: PublicKey) -> pa.Table:
    width = 2 * public_key.key_bytes
    buf = b"".join(int(c).to_bytes(width, "big") for c in values)
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(buf)])
    return pa.Table.from_arrays([arr], names=["ciphertext"])


def _ints_table(values: Sequence[int], width: int) -> pa.Table:
    buf = b"".join(int(v).to_bytes(width, "big") for v in values)
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(buf)])
    return pa.Table.from_arrays([arr], names=["value"])


def _ints(table: pa.Table, column: str, width: int, *, peer: str, what: str, below: int) -> list[int]:
    col = table.column(column)
    if col.type.byte_width != width:
        raise ProtocolError(f"party '{peer}' sent {what} of {col.type.byte_width} bytes, expected {width}")
    raw = b"".join(bytes(c.buffers()[1])[c.offset * width : (c.offset + len(c)) * width] for c in col.chunks)
    out = [int.from_bytes(raw[i : i + width], "big") for i in range(0, len(raw), width)]
    if any(v >= below for v in out):
        raise ProtocolError(f"party '{peer}' sent {what} out of range for the key")
    return out


def _categories_json(categories: Mapping[str, Sequence]) -> str:
    return json.dumps({c: [_plain(v) for v in vals] for c, vals in categories.items()})


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --- what the guest ends with ---------------------------------------------------------------------


@dataclass(frozen=True)
class PairResult:
    """One host's cross-tab at the guest: the noised table and what was released to the host."""

    host: str
    crosstab: ct.CrossTab
    released: pd.DataFrame  # long form, suppressed cells marked and their values withheld


def released_frame(table: ct.CrossTab, k: int) -> pd.DataFrame:
    """The long-form released table: withheld cells keep their labels, their numbers become missing."""
    return table.to_frame(k)


# --- guest ----------------------------------------------------------------------------------------


def run_guest(
    session: Session,
    host: str,
    options: AudienceOptions,
    *,
    key_bits: int,
    guest_categories: Mapping[str, Sequence],
    guest_cells: np.ndarray,
    guest_metrics: pd.DataFrame | None,
    workers: WorkerPool | None = None,
    disable_noise_for_tests: bool = False,
) -> PairResult:
    """The guest's side of the cross-tab with ``host`` on its shared rows (in the shared order)."""
    session.uses(AUDIENCE)
    me = session.party
    public_key = session.receive_key(host)
    if public_key.bits != key_bits:
        raise ProtocolError(f"party '{host}' sent a {public_key.bits}-bit key, the job says {key_bits}")
    session.send(CELLS, host, pa.table({"categories": [_categories_json(guest_categories)]}), host=host)
    reply = session.recv(LAYOUT, host, host=host)
    try:
        received = json.loads(one(reply, "layout"))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"party '{host}' sent an unreadable layout") from exc
    layout = ct.verify_layout(
        received, options, guest=me, host=host, key_bits=key_bits, max_rows=len(guest_cells)
    )
    ours = json.loads(_categories_json(guest_categories))
    if {c: list(v) for c, v in layout.guest_categories.items()} != ours:
        raise ProtocolError(f"the layout from '{host}' does not use the guest's segment categories")
    parts = int(one(reply, "parts"))
    expected = len(guest_cells) * len(layout.blocks)
    if parts != -(-expected // ROWS_PER_PART) and not (expected == 0 and parts == 0):
        raise ProtocolError(f"party '{host}' announces {parts} row parts for {expected} ciphertexts")
    n2 = int(public_key.n_square)
    width = 2 * public_key.key_bytes
    rows: list[mpz] = []
    for part in range(parts):
        table = session.recv(ROWS, host, host=host, part=part)
        rows.extend(
            mpz(v) for v in _ints(table, "ciphertext", width, peer=host, what="row ciphertexts", below=n2)
        )
    if len(rows) != expected:
        raise ProtocolError(f"party '{host}' sent {len(rows)} row ciphertexts, expected {expected}")
    acc = ct.fold(rows, guest_cells, layout, public_key, guest_metrics=guest_metrics, workers=workers)
    del rows
    sealed, state = ct.seal(acc, disable_noise_for_tests=disable_noise_for_tests)
    session.send(SEALED, host, _cipher_table(sealed, public_key), host=host)
    answer = session.recv(REPLY, host, host=host)
    n = int(public_key.n)
    values = _ints(answer, "value", public_key.key_bytes, peer=host, what="reply values", below=n)
    table = ct.decode(state, values)
    released = released_frame(table, options.k)
    session.send(RELEASE, host, pa.table({"table": [frame_to_json(released)]}), host=host)
    log.info(
        "audience: cross-tab with '%s' on %d shared rows, %d cells", host, len(guest_cells), table.counts.size
    )
    return PairResult(host, table, released)


# --- host -----------------------------------------------------------------------------------------


def run_host(
    session: Session,
    guest: str,
    options: AudienceOptions,
    keypair: tuple[PublicKey, PrivateKey],
    *,
    host_categories: Mapping[str, Sequence],
    host_segments: pd.DataFrame | None,
    host_metrics: pd.DataFrame | None,
    rows: int,
    workers: WorkerPool | None = None,
    disable_noise_for_tests: bool = False,
) -> tuple[ct.Layout, pd.DataFrame]:
    """A host's side: encrypt its shared rows (shared order) under its own key; returns the layout and the
    released table."""
    session.uses(AUDIENCE)
    me = session.party
    public_key, private_key = keypair
    session.hand_out_key(public_key, [guest])
    cells_msg = session.recv(CELLS, guest, host=me)
    try:
        guest_categories = {c: tuple(v) for c, v in json.loads(one(cells_msg, "categories")).items()}
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ProtocolError(f"party '{guest}' sent unreadable segment categories") from exc
    layout = ct.make_layout(
        options, guest=guest, host=me, guest_categories=guest_categories,
        host_categories=host_categories, rows=rows, key_bits=public_key.bits,
    )  # fmt: skip
    frame = host_segments if host_segments is not None else pd.DataFrame(index=range(rows))
    plains = ct.encode_rows(frame, host_metrics, layout)
    parts = -(-len(plains) // ROWS_PER_PART)
    info = pa.table({"layout": [json.dumps(layout.to_dict())], "parts": [parts]})
    session.send(LAYOUT, guest, info, host=me)
    # Encrypted and sent part by part: the guest never waits for all rows at once, memory stays bounded.
    for part in range(parts):
        chunk = plains[part * ROWS_PER_PART : (part + 1) * ROWS_PER_PART]
        cts = ct.encrypt_rows(private_key, chunk, workers=workers)
        session.send(ROWS, guest, _cipher_table(cts, public_key), host=me, part=part)
    del plains
    sealed_msg = session.recv(SEALED, guest, host=me)
    n2 = int(public_key.n_square)
    sealed = [
        mpz(v)
        for v in _ints(sealed_msg, "ciphertext", 2 * public_key.key_bytes, peer=guest, what="sums", below=n2)
    ]
    reply = ct.respond(private_key, sealed, layout, disable_noise_for_tests=disable_noise_for_tests)
    session.send(REPLY, guest, _ints_table(reply, public_key.key_bytes), host=me)
    released = session.recv(RELEASE, guest, host=me)
    try:
        table = frame_from_json(one(released, "table"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"party '{guest}' sent an unreadable released table") from exc
    if len(table) != layout.guest_cells * layout.host_cells or "suppressed" not in table.columns:
        raise ProtocolError(f"party '{guest}' sent a released table that does not match the layout")
    return layout, table


def frame_to_json(frame: pd.DataFrame) -> str:
    """A released table as JSON (withheld values as null), labels kept as they are."""
    data = [
        [None if isinstance(v, float) and v != v else _plain(v) for v in row]
        for row in frame.itertuples(index=False)
    ]
    return json.dumps({"columns": [str(c) for c in frame.columns], "data": data})


def frame_from_json(text: str) -> pd.DataFrame:
    raw = json.loads(text)
    return pd.DataFrame(raw["data"], columns=raw["columns"])


__all__ = ["AUDIENCE", "PSI_TAG", "PairResult", "run_guest", "run_host"]
