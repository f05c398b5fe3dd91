"""Joint audience analytics (DESIGN.md §13): noised cross-tabs of shared customers, guest x each host.

For every host ``h`` the parties first run the PSI (``psi`` protocol, tag prefix ``audience-psi``,
``reveal = "guest-only"``: the host learns the intersection size alone, never which of its rows are
shared; every host gets its own table). Then, with the mechanisms of :mod:`vfl.analytics.crosstab`:

1. the guest tells the host its segment columns' categories (``audience.cells``);
2. the host builds the slot layout of both directions and picks the one whose rows cost fewer ciphertexts
   (:mod:`vfl.analytics.plan`: two rows a plaintext where they fit; ties: the host encrypts), and sends it
   (``audience.layout``: the layout, who encrypts, the number of row parts);
3. **the host encrypts** (``[[.]]`` under the host's key): one (or a few) ciphertext(s) per row -- or per
   two rows -- **of all its rows**, in its PSI order: the row's one-hot host cell and its clipped metric
   values, packed in slots (``audience.rows``), on the key owner's CRT path part by part; the guest folds each
   shared row (half) into its own cell's accumulator as the parts arrive (one modular multiplication per row;
   rows it does not share are skipped), raises rows to its own metric values for guest-metric sums, adds its
   **own full-strength noise share** and uniform masks (the discarded row-half and products statistically),
   re-randomizes (``audience.sealed``); the host decrypts (masked values: it learns nothing), adds **its own
   full-strength noise share** and replies (``audience.reply``: per accumulator its kept bits, the two
   halves of a pair summed); the guest removes its masks: ``value + Z_guest + Z_host``;
4. **or the guest encrypts** (``{[.]}`` under the guest's key, handed out as ``session.public-key``): one
   ciphertext slot per *host row* in the host's PSI order -- the guest knows where each of its shared rows
   sits in it (the PSI told it, §5), the host knows its own cell of every position, neither knows the other's
   -- holding the guest's one-hot cell and metrics of a shared row and zeros for the others, two rows a
   plaintext (``audience.guest-rows``); the host folds every row into its own cell's accumulators (low and
   high halves), raises them to its metric values, adds **its own full-strength noise share**, masks the
   discarded halves statistically and the two halves of each pair with masks that cancel, re-randomizes
   (``audience.guest-sealed``); the guest decrypts the sum of each pair's halves and adds **its own
   full-strength noise share**: ``value + Z_host + Z_guest``;
5. the guest knows ``Z_guest`` but not ``Z_host``, so what it sees is an epsilon-DP release. It withholds
   every cell whose noised count is below ``k`` and sends the released table to the host
   (``audience.release``); the host knows ``Z_host`` but not ``Z_guest``, so its view too is an epsilon-DP
   release. No party knows the noise in what it sees.

Message table (``AUDIENCE``; ``{host}`` names the host; the encrypting party's public key travels as the
session's ``session.public-key``):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``audience.cells`` | guest -> host | the guest's segment columns and their categories | the guest's segment categories (declared, or those that occur in its data) |
| ``audience.layout`` | host -> guest | the slot layout (both parties' categories, metric names and bounds, rows, epsilon per number, row pairing), who encrypts, number of row parts | the host's segment categories and metric names, the intersection size (which it already knows) |
| ``audience.rows`` | host -> guest | ``[[one-hot cell + metrics]]`` per host row or pair of rows (all, PSI order) and block | nothing (encrypted under the host's key) |
| ``audience.sealed`` | guest -> host | per accumulator (and row-half) ``[[acc + Z_guest + R]]``, ``R`` uniform (truncated: in its kept bits, statistically elsewhere) | nothing (it decrypts masked values) |
| ``audience.reply`` | host -> guest | ``acc + Z_guest + R + Z_host`` (truncated: its kept bits; paired: both halves summed) | the cross-tab with the host's noise share, which it does not know |
| ``audience.guest-rows`` | guest -> host | ``{[one-hot cell + metrics]}`` per pair of host rows (PSI order; zeros for rows not shared) and block | nothing (encrypted under the guest's key) |
| ``audience.guest-sealed`` | host -> guest | per accumulator and row-half ``{[acc + Z_host + r]}``, ``r`` and ``-r`` on a pair's halves, the discarded halves statistically masked | the cross-tab with the host's noise share (the sum of each pair's kept bits), which it does not know |
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
from vfl.analytics import plan as direction
from vfl.analytics.dp import AudienceOptions
from vfl.crypto import PrivateKey, PublicKey, WorkerPool, generate_keypair, ints_from_arrow, ints_to_arrow
from vfl.crypto.arrow import KIND, ciphertext_table, read_metadata, table_ciphertexts
from vfl.errors import ProtocolError
from vfl.protocols.messages import FIXED, INT, TEXT, Protocol, message, one
from vfl.protocols.session import Session

log = logging.getLogger(__name__)

ROWS_PER_PART = 1 << 14  # ciphertexts per block in one rows message (8 MiB a block at 2048 bits)
PSI_TAG = "audience-psi"
PSI_REVEAL = "guest-only"  # hosts learn the intersection size alone, never which of their rows are shared

AUDIENCE = Protocol(
    "audience",
    (
        message("audience.cells", "audience/{host}/cells", "guest", "host",
                "the guest's segment columns and their categories", rows=1, categories=TEXT),
        message("audience.layout", "audience/{host}/layout", "host", "guest",
                "the host's segment categories, metric names and bounds, and the intersection size "
                "(the slot layout: no per-row value), which party encrypts", rows=1, layout=TEXT, parts=INT,
                encrypts=TEXT),
        message("audience.rows", "audience/{host}/rows/{part}", "host", "guest",
                "nothing: every host row's cell and metrics (all its rows, in its PSI order), encrypted "
                "under the host's key", ciphertext=FIXED),
        message("audience.sealed", "audience/{host}/sealed", "guest", "host",
                "nothing: per guest cell sums plus the guest's noise share, masked before decryption "
                "(uniformly; a truncated accumulator uniformly in the bits returned, statistically elsewhere)",
                ciphertext=FIXED),
        message("audience.reply", "audience/{host}/reply", "host", "guest",
                "the cross-tab (counts and clipped sums by guest cell x host cell) with the host's "
                "discrete Laplace noise share, which the guest does not know", value=FIXED),
        message("audience.guest-rows", "audience/{host}/guest-rows/{part}", "guest", "host",
                "nothing: the guest's cell and metrics per host row (the host's PSI order, zeros for rows "
                "not shared), two rows a plaintext, encrypted under the guest's key", ciphertext=FIXED),
        message("audience.guest-sealed", "audience/{host}/guest-sealed", "host", "guest",
                "the cross-tab (counts and clipped sums by guest cell x host cell) with the host's "
                "discrete Laplace noise share, which the guest does not know (per pair of row-halves only "
                "their sum: each half uniformly masked, the discarded halves statistically)", ciphertext=FIXED),
        message("audience.release", "audience/{host}/release", "guest", "host",
                "the released cross-tab (cells with a noised count below k withheld) with the guest's "
                "discrete Laplace noise share, which the host does not know", rows=1, table=TEXT),
    ),
    never={
        "guest": ("any host id outside the intersection", "any host per-row segment or metric value",
                  "the host's noise share", "which host cell any row is in"),
        "host": ("which of its rows are shared", "any guest per-row segment or metric value",
                 "the guest's cells of any row", "the guest's noise share", "suppressed cells"),
    },
)  # fmt: skip
CELLS, LAYOUT, ROWS, SEALED, REPLY, GUEST_ROWS, GUEST_SEALED, RELEASE = AUDIENCE.messages


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


def row_parts(layout: ct.Layout, n_rows: int) -> int:
    """Rows messages for ``n_rows`` rows: ``ROWS_PER_PART`` ciphertexts per block each."""
    return -(-layout.ciphertexts(n_rows) // (ROWS_PER_PART * len(layout.blocks)))


def _rows_per_part(layout: ct.Layout) -> int:
    return ROWS_PER_PART * (2 if layout.pair_bits else 1)


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


@dataclass(frozen=True)
class _Stream:
    """One direction's rows messages: the declaration, its tag parameters, the encrypting party's key."""

    message: Any
    peer: str
    tags: Mapping[str, str]
    kind: bytes
    public_key: PublicKey


def _send_rows(
    session: Session, stream: _Stream, private_key: PrivateKey, plains: Sequence[int], layout: ct.Layout,
    clock: Clock, workers: WorkerPool | None,
) -> None:  # fmt: skip
    """Encrypt (key owner's CRT path) and send the rows part by part, the next parts on ``workers``."""
    role = session.role
    step = ROWS_PER_PART * len(layout.blocks)
    for part, (cts, cpu) in enumerate(ct.encrypt_parts(private_key, plains, step, workers)):
        clock.lap(f"{role}: wait for encryption")
        clock.add(f"{role}: encrypt (cpu)", cpu)
        table = ciphertext_table(cts, stream.public_key, {KIND: stream.kind})
        session.send(stream.message, stream.peer, table, part=part, **stream.tags)
        clock.lap(f"{role}: send rows")


def _fold_rows(
    session: Session, stream: _Stream, layout: ct.Layout, cells: np.ndarray, exponents: list[np.ndarray],
    parts: int, clock: Clock, workers: WorkerPool | None,
) -> ct.Accumulators:  # fmt: skip
    """Receive the rows part by part and fold each as it arrives (on ``workers``): one modmul per row."""
    role, peer, public_key = session.role, stream.peer, stream.public_key
    kernel, args, per = ct.fold_task(layout), ct.fold_args(layout, public_key), _rows_per_part(layout)
    pending = []
    for part in range(parts):
        lo, hi = part * per, min(len(cells), (part + 1) * per)
        table = session.recv(stream.message, peer, part=part, **stream.tags)
        rows = _ciphertexts(table, stream.kind, public_key, f"row ciphertexts from {peer!r}")
        if len(rows) != layout.ciphertexts(hi - lo):
            raise ProtocolError(
                f"party '{peer}' sent {len(rows)} row ciphertexts in part {part}, expected {layout.ciphertexts(hi - lo)}"
            )
        task = (kernel, rows, cells[lo:hi], [q[lo:hi] for q in exponents], *args)
        pending.append(workers.submit(ct.timed_call, *task) if workers is not None else ct.timed_call(*task))
        clock.lap(f"{role}: receive rows")
    done = [f.result() if workers is not None else f for f in pending]
    clock.lap(f"{role}: fold (after the last part)")
    clock.add(f"{role}: fold (cpu)", sum(sec for _, sec in done))
    return ct.combine([partial for partial, _ in done], layout, public_key)


# --- what the guest ends with ---------------------------------------------------------------------


@dataclass(frozen=True)
class PairResult:
    """One host's cross-tab at the guest: the noised table and what was released to the host."""

    host: str
    crosstab: ct.CrossTab
    released: pd.DataFrame  # long form, suppressed cells marked and their values withheld
    encrypts: str = direction.HOST  # which party encrypted the rows


def released_frame(table: ct.CrossTab, k: int) -> pd.DataFrame:
    """The long-form released table: withheld cells keep their labels, their numbers become missing."""
    return table.to_frame(k)


# --- guest ----------------------------------------------------------------------------------------


def _guest_plan(
    reply: pa.Table, options: AudienceOptions, me: str, host: str, key_bits: int, shared: int
) -> direction.Plan:
    """The host's layout and direction, accepted only if both follow from our own options."""
    try:
        received = json.loads(one(reply, "layout"))
        encrypts = str(one(reply, "encrypts"))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"party '{host}' sent an unreadable layout") from exc
    if encrypts not in (direction.HOST, direction.GUEST):
        raise ProtocolError(f"party '{host}' names an unknown encrypting side {encrypts!r}")
    folder, encryptor = (me, host) if encrypts == direction.HOST else (host, me)
    layout = ct.verify_layout(
        received, options, guest=folder, host=encryptor, key_bits=key_bits, max_rows=shared
    )
    mine, theirs = layout.guest_categories, layout.host_categories
    if encrypts == direction.GUEST:
        mine, theirs = theirs, mine
    ours = direction.plan(options, (me, mine), (host, theirs), rows=layout.rows, key_bits=key_bits)
    if ours.encrypts != encrypts or ours.layout.to_dict() != layout.to_dict():
        raise ProtocolError(f"party '{host}' chose a direction that does not follow from the layouts")
    return ours


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
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    disable_noise_for_tests: bool = False,
    timings: dict[str, float] | None = None,
) -> PairResult:
    """The guest's side of the cross-tab with ``host``; ``guest_cells`` by the host's rows (PSI order, -1 for
    rows not shared), ``guest_metrics`` likewise. Folds the host's rows, or encrypts its own (with ``keypair``,
    generated if not given) when the layout says so. ``timings`` (if given) receives the seconds of every step.
    """
    session.uses(AUDIENCE)
    clock = Clock(timings)
    me = session.party
    session.send(CELLS, host, pa.table({"categories": [_categories_json(guest_categories)]}), host=host)
    reply = session.recv(LAYOUT, host, host=host)
    cells = np.asarray(guest_cells, dtype=np.int64)
    plan = _guest_plan(reply, options, me, host, key_bits, int((cells >= 0).sum()))
    layout = plan.layout
    if {c: list(v) for c, v in plan.table.guest_categories.items()} != json.loads(
        _categories_json(guest_categories)
    ):
        raise ProtocolError(f"the layout from '{host}' does not use the guest's segment categories")
    parts = int(one(reply, "parts"))
    if parts != row_parts(layout, len(cells)):
        raise ProtocolError(f"party '{host}' announces {parts} row parts for {len(cells)} rows")
    clock.lap("guest: layout")
    if plan.encrypts == direction.HOST:
        table = _guest_folds(session, host, layout, cells, guest_metrics, parts, key_bits, clock, workers,
                             disable_noise_for_tests)  # fmt: skip
    else:
        table = _guest_encrypts(session, host, layout, cells, guest_metrics, keypair, key_bits, clock, workers,
                                disable_noise_for_tests)  # fmt: skip
    table = direction.oriented(table, plan)
    released = released_frame(table, options.k)
    session.send(RELEASE, host, pa.table({"table": [frame_to_json(released)]}), host=host)
    clock.lap("guest: decode, release")
    log.info("audience: cross-tab with '%s' on %d rows, %d cells, %s encrypts", host, len(cells),
             table.counts.size, plan.encrypts)  # fmt: skip
    return PairResult(host, table, released, plan.encrypts)


def _guest_folds(
    session: Session, host: str, layout: ct.Layout, cells: np.ndarray, guest_metrics: pd.DataFrame | None,
    parts: int, key_bits: int, clock: Clock, workers: WorkerPool | None, disable_noise_for_tests: bool,
) -> ct.CrossTab:  # fmt: skip
    """The host encrypts: fold its rows by our cell, seal (our noise share, uniform masks), unmask its reply."""
    public_key = session.receive_key(host)
    if public_key.bits != key_bits:
        raise ProtocolError(f"party '{host}' sent a {public_key.bits}-bit key, the job says {key_bits}")
    ct.check_cells(cells, layout)
    exponents = ct.guest_exponents(guest_metrics, layout, len(cells))
    stream = _Stream(ROWS, host, {"host": host}, ROWS_KIND, public_key)
    acc = _fold_rows(session, stream, layout, cells, exponents, parts, clock, workers)
    sealed, state = ct.seal(acc, disable_noise_for_tests=disable_noise_for_tests)
    session.send(SEALED, host, ciphertext_table(sealed, public_key, {KIND: SEALED_KIND}), host=host)
    clock.lap("guest: noise, mask, send")
    values = ints_from_arrow(session.recv(REPLY, host, host=host), kind=REPLY_KIND)
    clock.lap("guest: wait for the host's decryption")
    return ct.decode(state, values)


def _guest_encrypts(
    session: Session, host: str, layout: ct.Layout, cells: np.ndarray, guest_metrics: pd.DataFrame | None,
    keypair: tuple[PublicKey, PrivateKey] | None, key_bits: int, clock: Clock, workers: WorkerPool | None,
    disable_noise_for_tests: bool,
) -> ct.CrossTab:  # fmt: skip
    """The guest encrypts: its cell and metrics per host row under its own key, two rows a plaintext; then
    decrypt the host's sealed sums and add our noise share."""
    if keypair is None or keypair[0].bits != key_bits:
        keypair = generate_keypair(key_bits)
    public_key, private_key = keypair
    session.hand_out_key(public_key, [host])
    ct.check_cells(cells, layout, side="host")  # our cells are the layout's encrypting side
    metrics = guest_metrics if guest_metrics is not None else pd.DataFrame(index=range(len(cells)))
    qs = {m: ct.quantize(metrics[m], layout.bounds[m], layout.fraction_bits, m) for m in layout.host_metrics}
    plains = ct.encode_cells(cells, qs, layout)
    clock.lap("guest: key, encode rows")
    stream = _Stream(GUEST_ROWS, host, {"host": host}, GUEST_ROWS_KIND, public_key)
    _send_rows(session, stream, private_key, plains, layout, clock, workers)
    del plains
    what = f"sealed accumulators from {host!r}"
    sealed = _ciphertexts(session.recv(GUEST_SEALED, host, host=host), GUEST_SEALED_KIND, public_key, what)
    clock.lap("guest: wait for the host's fold")
    values = ct.respond(private_key, sealed, layout, disable_noise_for_tests=disable_noise_for_tests)
    clock.lap("guest: decrypt, noise")
    return ct.decode(ct.unmasked_state(layout, int(public_key.n)), values)


GUEST_ROWS_KIND, GUEST_SEALED_KIND = b"audience.guest-rows", b"audience.guest-sealed"


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
    """A host's side: choose the direction, then encrypt its rows under its own key part by part (the next
    parts on ``workers`` while one is sent), or fold the guest's; returns the table's layout and the
    released table."""
    session.uses(AUDIENCE)
    clock = Clock(timings)
    me = session.party
    public_key = keypair[0]
    cells_msg = session.recv(CELLS, guest, host=me)
    try:
        guest_categories = {c: tuple(v) for c, v in json.loads(one(cells_msg, "categories")).items()}
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ProtocolError(f"party '{guest}' sent unreadable segment categories") from exc
    plan = direction.plan(
        options,
        (guest, guest_categories),
        (me, shared.categories),
        rows=shared.shared,
        key_bits=public_key.bits,
    )
    layout, parts = plan.layout, row_parts(plan.layout, shared.count)
    layout_msg = {"layout": [json.dumps(layout.to_dict())], "parts": [parts], "encrypts": [plan.encrypts]}
    session.send(LAYOUT, guest, pa.table(layout_msg), host=me)
    clock.lap("host: layout")
    if plan.encrypts == direction.HOST:
        _host_encrypts(session, guest, layout, keypair, shared, clock, workers, disable_noise_for_tests)
    else:
        _host_folds(session, guest, layout, shared, parts, clock, workers, disable_noise_for_tests)
    released = session.recv(RELEASE, guest, host=me)
    try:
        table = frame_from_json(one(released, "table"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"party '{guest}' sent an unreadable released table") from exc
    if len(table) != layout.guest_cells * layout.host_cells or "suppressed" not in table.columns:
        raise ProtocolError(f"party '{guest}' sent a released table that does not match the layout")
    clock.lap("host: release")
    return plan.table, table


def _host_encrypts(
    session: Session, guest: str, layout: ct.Layout, keypair: tuple[PublicKey, PrivateKey], shared: HostRows,
    clock: Clock, workers: WorkerPool | None, disable_noise_for_tests: bool,
) -> None:  # fmt: skip
    """Encrypt every row (its cell and metrics) under our key; decrypt the guest's masked sums, add our noise."""
    me, (public_key, private_key) = session.party, keypair
    session.hand_out_key(public_key, [guest])
    frame = shared.segments if shared.segments is not None else pd.DataFrame(index=range(shared.count))
    plains = ct.encode_rows(frame, shared.metrics, layout)
    clock.lap("host: encode rows")
    _send_rows(session, _Stream(ROWS, guest, {"host": me}, ROWS_KIND, public_key), private_key, plains,
               layout, clock, workers)  # fmt: skip
    del plains
    what = f"accumulators from {guest!r}"
    sealed = _ciphertexts(session.recv(SEALED, guest, host=me), SEALED_KIND, public_key, what)
    clock.lap("host: wait for the guest's fold")
    reply = ct.respond(private_key, sealed, layout, disable_noise_for_tests=disable_noise_for_tests)
    session.send(REPLY, guest, ints_to_arrow(reply, kind=REPLY_KIND), host=me)
    clock.lap("host: decrypt, noise, reply")


def _host_folds(
    session: Session, guest: str, layout: ct.Layout, shared: HostRows, parts: int, clock: Clock,
    workers: WorkerPool | None, disable_noise_for_tests: bool,
) -> None:  # fmt: skip
    """Fold the guest's rows by our cell (every row: those not shared hold zeros), raise them to our
    metrics, seal with our noise share (the decryptor, the guest, learns the noised sums only)."""
    me = session.party
    public_key = session.receive_key(guest)
    if public_key.bits != layout.key_bits:
        raise ProtocolError(
            f"party '{guest}' sent a {public_key.bits}-bit key, the job says {layout.key_bits}"
        )
    cells = (
        ct.cell_codes(shared.segments, layout.guest_categories)
        if layout.guest_categories
        else np.zeros(shared.count, dtype=np.int64)
    )
    exponents = ct.guest_exponents(shared.metrics, layout, shared.count)
    stream = _Stream(GUEST_ROWS, guest, {"host": me}, GUEST_ROWS_KIND, public_key)
    acc = _fold_rows(session, stream, layout, cells, exponents, parts, clock, workers)
    sealed, _ = ct.seal(acc, disable_noise_for_tests=disable_noise_for_tests, uniform=False)
    session.send(
        GUEST_SEALED, guest, ciphertext_table(sealed, public_key, {KIND: GUEST_SEALED_KIND}), host=me
    )
    clock.lap("host: noise, mask, send")


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
