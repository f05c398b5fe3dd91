"""Joint audience analytics (DESIGN.md §13): noised cross-tabs of shared customers, guest x each host.

For every host ``h`` the parties first run the PSI (``psi`` protocol, tag prefix ``audience-psi``,
``reveal = "guest-only"``: the host learns the intersection size alone, never which of its rows are
shared; every host gets its own table). Then, under the **host's** Paillier key (``[[.]]``), with the
mechanisms of :mod:`vfl.analytics.crosstab`:

1. the guest tells the host its segment columns' categories (``audience.cells``);
2. the host builds the slot layout (its own categories, its metrics, the intersection size, the
   epsilon of every released number, the slot widths) and sends it (``audience.layout``), then one
   (or a few) ciphertext(s) per row **of all its rows**, in its PSI order: the row's one-hot host cell
   and its clipped metric values, packed in slots (``audience.rows``), encrypted on the key owner's
   CRT path part by part (the next parts on its workers while one is sent);
3. the guest folds each shared row into its own cell's accumulator as the parts arrive (one modular
   multiplication per row and block; rows it does not share are skipped), raises rows to its own
   metric values for guest-metric sums (bucket multi-exponentiation), adds its **own full-strength
   noise share** and a mask under encryption, re-randomizes (``audience.sealed``);
4. the host decrypts (a masked value: it learns nothing), adds **its own full-strength noise share**
   and replies (``audience.reply``; a truncated accumulator -- a guest metric over a mixed block --
   only its count slots, the rest is never returned);
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
| ``audience.layout`` | host -> guest | the slot layout (host categories, metric names and bounds, rows, epsilon per number), number of row parts | the host's segment categories and metric names, the intersection size (which it already knows) |
| ``audience.rows`` | host -> guest | ``[[one-hot cell + metrics]]`` per host row (all, PSI order) and block | nothing (encrypted under the host's key) |
| ``audience.sealed`` | guest -> host | per accumulator ``[[acc + Z_guest + R]]``, ``R`` uniform (truncated: in its kept bits) | nothing (it decrypts masked values) |
| ``audience.reply`` | host -> guest | ``acc + Z_guest + R + Z_host`` (truncated: its kept bits) | the cross-tab with the host's noise share, which it does not know |
| ``audience.release`` | guest -> host | the released cross-tab (cells below ``k`` withheld) | the released cross-tab with the guest's noise share, which it does not know |

Nothing here reads a file or a config; the role runtime (``vfl.parties.audience``) does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from gmpy2 import mpz

from vfl.analytics import crosstab as ct
from vfl.analytics.dp import AudienceOptions
from vfl.crypto import PrivateKey, PublicKey, WorkerPool, ints_from_arrow, ints_to_arrow
from vfl.crypto.arrow import KIND, ciphertext_table, read_metadata, table_ciphertexts
from vfl.errors import ProtocolError
from vfl.protocols.messages import FIXED, INT, TEXT, Protocol, message, one
from vfl.protocols.session import Session

log = logging.getLogger(__name__)

ROWS_PER_PART = 1 << 14  # shared rows per audience.rows message (8 MiB a block at 2048 bits)
PSI_TAG = "audience-psi"
PSI_REVEAL = "guest-only"  # hosts learn the intersection size alone, never which of their rows are shared

AUDIENCE = Protocol(
    "audience",
    (
        message("audience.cells", "audience/{host}/cells", "guest", "host",
                "the guest's segment columns and their categories", rows=1, categories=TEXT),
        message("audience.layout", "audience/{host}/layout", "host", "guest",
                "the host's segment categories, metric names and bounds, and the intersection size "
                "(the slot layout: no per-row value)", rows=1, layout=TEXT, parts=INT),
        message("audience.rows", "audience/{host}/rows/{part}", "host", "guest",
                "nothing: every host row's cell and metrics (all its rows, in its PSI order), encrypted "
                "under the host's key", ciphertext=FIXED),
        message("audience.sealed", "audience/{host}/sealed", "guest", "host",
                "nothing: per guest cell sums plus the guest's noise share, masked before decryption "
                "(uniformly; a truncated accumulator uniformly in the bits returned, statistically above)",
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
        "host": ("which of its rows are shared", "any guest per-row segment or metric value",
                 "the guest's cells of any row", "the guest's noise share", "suppressed cells"),
    },
)  # fmt: skip
CELLS, LAYOUT, ROWS, SEALED, REPLY, RELEASE = AUDIENCE.messages


# --- wire helpers ---------------------------------------------------------------------------------

ROWS_KIND, SEALED_KIND, REPLY_KIND = b"audience.rows", b"audience.sealed", b"audience.reply"


def _ciphertexts(table: pa.Table, kind: bytes, public_key: PublicKey, what: str) -> list[mpz]:
    """A ciphertext message of this key: kind and fingerprint checked, every value ``< n^2`` and a unit."""
    read_metadata(table, kind, public_key, what)
    return table_ciphertexts(table, public_key, what)


def _categories_json(categories: Mapping[str, Sequence]) -> str:
    return json.dumps({c: [_plain(v) for v in vals] for c, vals in categories.items()})


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class Clock:
    """Wall-clock seconds per step, added up under a name (``timings`` of the role runtime)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.steps = into if into is not None else {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + now - self._last
        self._last = now

    def add(self, step: str, seconds: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + seconds


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
    timings: dict[str, float] | None = None,
) -> PairResult:
    """The guest's side of the cross-tab with ``host`` on its shared rows (in the shared order).

    The rows are folded part by part as they arrive (on ``workers``), while the host encrypts the next.
    ``timings`` (if given) receives the seconds of every step.
    """
    session.uses(AUDIENCE)
    clock = Clock(timings)
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
    cells = np.asarray(guest_cells, dtype=np.int64)
    shared = int((cells >= 0).sum())
    layout = ct.verify_layout(received, options, guest=me, host=host, key_bits=key_bits, max_rows=shared)
    ours = json.loads(_categories_json(guest_categories))
    if {c: list(v) for c, v in layout.guest_categories.items()} != ours:
        raise ProtocolError(f"the layout from '{host}' does not use the guest's segment categories")
    parts = int(one(reply, "parts"))
    if parts != -(-len(cells) // ROWS_PER_PART):
        raise ProtocolError(f"party '{host}' announces {parts} row parts for {len(cells)} rows")
    ct.check_cells(cells, layout)
    gq = ct.guest_exponents(guest_metrics, layout, len(cells))
    args = ct.fold_args(layout, public_key)
    n_blocks = len(layout.blocks)
    clock.lap("guest: layout")
    pending = []
    for part in range(parts):
        lo, hi = part * ROWS_PER_PART, min(len(cells), (part + 1) * ROWS_PER_PART)
        table = session.recv(ROWS, host, host=host, part=part)
        rows = _ciphertexts(table, ROWS_KIND, public_key, f"row ciphertexts from {host!r}")
        if len(rows) != (hi - lo) * n_blocks:
            raise ProtocolError(
                f"party '{host}' sent {len(rows)} row ciphertexts in part {part}, expected {(hi - lo) * n_blocks}"
            )
        task = (ct.fold_kernel, rows, cells[lo:hi], [q[lo:hi] for q in gq], *args)
        pending.append(workers.submit(ct.timed_call, *task) if workers is not None else ct.timed_call(*task))
        clock.lap("guest: receive rows")
    done = [f.result() if workers is not None else f for f in pending]
    clock.lap("guest: fold (after the last part)")
    clock.add("guest: fold (cpu)", sum(sec for _, sec in done))
    acc = ct.combine([partial for partial, _ in done], layout, public_key)
    del done, pending
    sealed, state = ct.seal(acc, disable_noise_for_tests=disable_noise_for_tests)
    session.send(SEALED, host, ciphertext_table(sealed, public_key, {KIND: SEALED_KIND}), host=host)
    clock.lap("guest: noise, mask, send")
    values = ints_from_arrow(session.recv(REPLY, host, host=host), kind=REPLY_KIND)
    clock.lap("guest: wait for the host's decryption")
    table = ct.decode(state, values)
    released = released_frame(table, options.k)
    session.send(RELEASE, host, pa.table({"table": [frame_to_json(released)]}), host=host)
    clock.lap("guest: decode, release")
    log.info("audience: cross-tab with '%s' on %d shared rows, %d cells", host, len(cells), table.counts.size)
    return PairResult(host, table, released)


# --- host -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRows:
    """A host's rows in its PSI order (all of them: it does not know which are shared), its segment
    categories, segment and metric columns, and the intersection size ``shared`` (the most rows a cell
    can sum: it sizes the slots)."""

    categories: Mapping[str, Sequence]
    segments: pd.DataFrame | None
    metrics: pd.DataFrame | None
    count: int  # rows encrypted: all of the host's rows
    shared: int


def run_host(
    session: Session,
    guest: str,
    options: AudienceOptions,
    keypair: tuple[PublicKey, PrivateKey],
    shared: HostRows,
    *,
    workers: WorkerPool | None = None,
    disable_noise_for_tests: bool = False,
    timings: dict[str, float] | None = None,
) -> tuple[ct.Layout, pd.DataFrame]:
    """A host's side: encrypt its shared rows under its own key, part by part (the next parts on
    ``workers`` while one is sent); returns the layout and the released table."""
    session.uses(AUDIENCE)
    clock = Clock(timings)
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
        host_categories=shared.categories, rows=shared.shared, key_bits=public_key.bits,
    )  # fmt: skip
    frame = shared.segments if shared.segments is not None else pd.DataFrame(index=range(shared.count))
    plains = ct.encode_rows(frame, shared.metrics, layout)
    parts = -(-shared.count // ROWS_PER_PART)
    session.send(
        LAYOUT, guest, pa.table({"layout": [json.dumps(layout.to_dict())], "parts": [parts]}), host=me
    )
    clock.lap("host: layout, encode rows")
    step = ROWS_PER_PART * len(layout.blocks)
    for part, (cts, cpu) in enumerate(ct.encrypt_parts(private_key, plains, step, workers)):
        clock.lap("host: wait for encryption")
        clock.add("host: encrypt (cpu)", cpu)
        session.send(ROWS, guest, ciphertext_table(cts, public_key, {KIND: ROWS_KIND}), host=me, part=part)
        clock.lap("host: send rows")
    del plains
    what = f"accumulators from {guest!r}"
    sealed = _ciphertexts(session.recv(SEALED, guest, host=me), SEALED_KIND, public_key, what)
    clock.lap("host: wait for the guest's fold")
    reply = ct.respond(private_key, sealed, layout, disable_noise_for_tests=disable_noise_for_tests)
    session.send(REPLY, guest, ints_to_arrow(reply, kind=REPLY_KIND), host=me)
    clock.lap("host: decrypt, noise, reply")
    released = session.recv(RELEASE, guest, host=me)
    try:
        table = frame_from_json(one(released, "table"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"party '{guest}' sent an unreadable released table") from exc
    if len(table) != layout.guest_cells * layout.host_cells or "suppressed" not in table.columns:
        raise ProtocolError(f"party '{guest}' sent a released table that does not match the layout")
    clock.lap("host: release")
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


__all__ = ["AUDIENCE", "PSI_TAG", "HostRows", "PairResult", "run_guest", "run_host"]
