"""ECDH private set intersection over Curve25519: the guest role and the host role (DESIGN.md §5).

Message table between the guest and each host ``h`` (``PSI``; ``{psi}`` is the run's tag prefix,
``"psi"`` by default, so a job can run several intersections):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``psi.hello`` | guest -> host | the job salt, the guest's set size | the guest's set size |
| ``psi.hello-ack`` | host -> guest | the host's set size | the host's set size |
| ``psi.guest-points`` | guest -> host | ``a·H(g)`` for the guest's ids, shuffled (fresh per host) | pseudo-random points: nothing about any id |
| ``psi.host-points`` | host -> guest | ``b·H(h)`` for the host's ids, shuffled | pseudo-random points: nothing about any id |
| ``psi.double`` | host -> guest | ``b·a·H(g)``, in the order received | which of its own ids the host shares |
| ``psi.result`` | guest -> host | which of the host's shuffled items are shared and their position in the shared order (``reveal="all"``), or only the size (``"guest-only"``) | its rows of the intersection and their positions, or the size alone |

The host computes its points while the guest computes its own, so both parties' cores are busy.
The guest computes ``a·b·H(h)``, matches it against ``b·a·H(g)``, keeps (with several hosts) the
ids present at every host and orders them in the **shared order**. Points travel as Arrow
``fixed_size_binary(32)`` columns, cut into messages of at most ``message_rows`` rows (metadata
``part``/``parts``/``rows``). The PSI settings (normalization, reveal mode) are part of the job's
agreement (``protocols/session.py``); run on a bare channel, the intersection agrees on them first.
Nothing here reads a file or a config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vfl.errors import ConfigError, ProtocolError
from vfl.protocols.messages import BYTES, FIXED, INT, Message, Protocol, message, one
from vfl.protocols.session import Members, Session
from vfl.psi.ecdh import ScalarMultiplier, SecretScalar
from vfl.psi.hashing import POINT_BYTES, POINT_DTYPE, SALT_BYTES, hash_ids
from vfl.psi.ids import PreparedIds, as_id_series, prepare_ids
from vfl.psi.matching import match_points
from vfl.psi.options import PsiOptions, PsiResult
from vfl.transport.channel import Channel

log = logging.getLogger(__name__)

POINT_TYPE = pa.binary(POINT_BYTES)
PARTS = ("part", "parts", "rows")

PSI = Protocol(
    "psi",
    (
        message("psi.hello", "{psi}/{host}/hello", "guest", "host",
                "the guest's set size (and the job's PSI salt)", rows=1, salt=BYTES, set_size=INT),
        message("psi.hello-ack", "{psi}/{host}/hello-ack", "host", "guest",
                "the host's set size", rows=1, set_size=INT),
        message("psi.guest-points", "{psi}/{host}/guest-points/{part}", "guest", "host",
                "the guest's blinded ids a·H(g), shuffled: pseudo-random points, nothing about any id",
                meta=PARTS, point=FIXED),
        message("psi.host-points", "{psi}/{host}/host-points/{part}", "host", "guest",
                "the host's blinded ids b·H(h), shuffled: pseudo-random points, nothing about any id",
                meta=PARTS, point=FIXED),
        message("psi.double", "{psi}/{host}/guest-points-double/{part}", "host", "guest",
                "which of its ids are in the intersection, and the intersection size",
                meta=PARTS, point=FIXED),
        message("psi.result", "{psi}/{host}/result/{part}", "guest", "host",
                "which of its rows are in the intersection (positions in the shared order) and the "
                "intersection size; with reveal = guest-only the size alone",
                meta=(*PARTS, "size"), item=INT, position=INT),
    ),
    never={
        "guest": ("any host id outside the intersection",),
        "host": ("any guest id outside the intersection", "which guest ids it does not share"),
    },
)  # fmt: skip
HELLO, HELLO_ACK, GUEST_POINTS, HOST_POINTS, DOUBLE, RESULT = PSI.messages

__all__ = ["PSI", "PsiOptions", "PsiResult", "run_guest", "run_host"]


# --------------------------------------------------------------------------------------------
# Arrow <-> NumPy points and chunked messages


def points_to_arrow(points: np.ndarray) -> pa.Array:
    """An ``S32`` array as an Arrow ``fixed_size_binary(32)`` array (zero-copy)."""
    points = np.ascontiguousarray(points)
    return pa.Array.from_buffers(POINT_TYPE, len(points), [None, pa.py_buffer(points.view(np.uint8))])


def points_from_arrow(column: pa.ChunkedArray | pa.Array, *, peer: str, tag: str) -> np.ndarray:
    """An Arrow ``fixed_size_binary(32)`` column as an ``S32`` array; anything else is a ``ProtocolError``."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if column.type != POINT_TYPE or column.null_count:
        raise ProtocolError(
            f"message '{tag}' from '{peer}' must hold non-null fixed_size_binary(32) points, got {column.type}"
        )
    parts = [
        np.frombuffer(c.buffers()[1], dtype=POINT_DTYPE, count=len(c), offset=c.offset * POINT_BYTES)
        for c in chunks
        if len(c)
    ]
    if not parts:
        return np.empty(0, dtype=POINT_DTYPE)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _send_parts(
    session: Session,
    msg: Message,
    to: str,
    columns: dict[str, Any],
    n: int,
    rows: int,
    meta: dict[str, str] | None = None,
    take: np.ndarray | None = None,
    **params: Any,
) -> None:
    """Send a table of ``n`` rows as the parts ``0..`` of ``msg``, at most ``rows`` rows each.

    With ``take`` (a permutation), row ``i`` is ``values[take[i]]``: a shuffled order is sent part by
    part, never held as a second copy of the columns.
    """
    parts = max(1, -(-n // rows))
    for i in range(parts):
        lo, hi = i * rows, min(n, (i + 1) * rows)
        picked = {
            name: values[lo:hi] if take is None else values[take[lo:hi]] for name, values in columns.items()
        }
        arrays = {
            name: points_to_arrow(values) if values.dtype == POINT_DTYPE else pa.array(values)
            for name, values in picked.items()
        }
        metadata = {"part": str(i), "parts": str(parts), "rows": str(n), **(meta or {})}
        session.send(msg, to, pa.table(arrays).replace_schema_metadata(metadata), part=i, **params)


def _iter_parts(
    session: Session, msg: Message, frm: str, timeout: float | None, expected_rows: int | None, **params: Any
) -> Iterator[tuple[pa.Table, int, dict[str, str]]]:
    """Receive the parts ``0..`` of ``msg`` sent by ``_send_parts``, yielding ``(table, part, meta)`` as they arrive.

    ``meta`` is the first part's metadata (part count, total rows, and anything the sender added).
    """
    first = session.recv(msg, frm, timeout=timeout, part=0, **params)
    tag = msg.tag(part=0, **params)
    meta = {k.decode(): v.decode() for k, v in (first.schema.metadata or {}).items()}
    try:
        parts, total = int(meta["parts"]), int(meta["rows"])
    except ValueError as exc:
        raise ProtocolError(f"message '{tag}' from '{frm}' has an unreadable part count") from exc
    if expected_rows is not None and total != expected_rows:
        raise ProtocolError(f"party '{frm}' announced {expected_rows} rows but sends {total} in '{tag}'")
    received = first.num_rows
    yield first, 0, meta
    for i in range(1, parts):
        table = session.recv(msg, frm, timeout=timeout, part=i, **params)
        received += table.num_rows
        yield table, i, meta
    if received != total:
        raise ProtocolError(f"party '{frm}' sent {received} rows in '{tag}' but announced {total}")


def _recv_points(
    session: Session, msg: Message, frm: str, timeout: float | None, expected: int, **params: Any
) -> Iterator[np.ndarray]:
    for table, _, _ in _iter_parts(session, msg, frm, timeout, expected, **params):
        yield points_from_arrow(table.column("point"), peer=frm, tag=msg.name)


def _gather(n: int, pieces: Iterator[np.ndarray]) -> np.ndarray:
    """``n`` points arriving in pieces, written into one preallocated array (no list + concatenate copy)."""
    out = np.empty(n, dtype=POINT_DTYPE)
    position = 0
    for piece in pieces:
        if position + len(piece) > n:
            raise ProtocolError(f"a peer sent more than the {n} points it announced")
        out[position : position + len(piece)] = piece
        position += len(piece)
    return out


def _size(table: pa.Table, peer: str) -> int:
    size = int(one(table, "set_size"))
    if size < 0:
        raise ProtocolError(f"party '{peer}' announced a negative set size")
    return size


# --------------------------------------------------------------------------------------------
# Roles


def _revealed(
    party: str, role: str, rows: np.ndarray, series: Any, sizes: dict[str, int], prepared: PreparedIds
) -> PsiResult:
    """A party's result when it learns its rows of the intersection (in the shared order)."""
    return PsiResult(
        party=party,
        role=role,
        size=len(rows),
        rows=rows,
        ids=series.iloc[rows].reset_index(drop=True),
        rows_revealed=True,
        set_sizes=sizes,
        duplicates_dropped=prepared.duplicates_dropped,
    )


def _session(channel: Channel | Session, guest: str, hosts: tuple[str, ...]) -> Session:
    """The session to run on: the job's, or for a bare channel one of the PSI's own parties."""
    if isinstance(channel, Session):
        return channel
    return Session(channel, Members(guest, hosts), job_id="psi")


def _agree(session: Session, options: PsiOptions) -> None:
    """A bare PSI agrees on its settings first; within a job they are part of the job's agreement."""
    if session.agreed is None:
        session.agree({f"psi.{k}": v for k, v in options.settings().items()})


@dataclass(frozen=True)
class _Run:
    """One party's PSI run: its session, ids, options, the id column's name, and a shared multiplier."""

    session: Session
    ids: Any
    options: PsiOptions
    column: str
    multiplier: ScalarMultiplier | None

    def prepare(self) -> tuple[PreparedIds, Any]:
        """This party's ids, checked and normalized (before any peer is contacted), then the agreement."""
        series = as_id_series(self.ids)
        options = self.options
        prepared = prepare_ids(
            series, normalization=options.normalization, dedupe=options.dedupe, column=self.column
        )
        _agree(self.session, options)
        return prepared, series


def _own_multiplier(options: PsiOptions) -> ScalarMultiplier:
    """A worker pool for this run alone, when the caller did not share one."""
    return ScalarMultiplier(
        workers=options.workers, chunk_size=options.chunk_size, parallel_threshold=options.parallel_threshold
    )


def _rng() -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(16), "big")))


def run_guest(
    channel: Channel | Session,
    ids: Any,
    hosts: list[str],
    options: PsiOptions | None = None,
    *,
    column: str = "id",
    multiplier: ScalarMultiplier | None = None,
) -> PsiResult:
    """The guest's side of the PSI with every host in ``hosts``; returns the guest's ``PsiResult``.

    ``channel`` is the job's ``Session`` (or a bare channel: the PSI then agrees on its settings
    itself). ``ids`` is the guest's id column (strings or integers); ``column`` only names it in
    error messages. ``multiplier`` lets the caller share a worker pool between runs.
    """
    options = options or PsiOptions()
    me = channel.party
    if not hosts:
        raise ConfigError("a PSI needs at least one host")
    if len(set(hosts)) != len(hosts) or me in hosts:
        raise ConfigError(f"PSI hosts must be distinct and differ from the guest '{me}', got {hosts}")
    session = _session(channel, me, tuple(hosts))
    session.uses(PSI)
    return session.guard(lambda: _guest(_Run(session, ids, options, column, multiplier), list(hosts)))


def _guest(run: _Run, hosts: list[str]) -> PsiResult:
    session, options, multiplier = run.session, run.options, run.multiplier
    me, tag, started = session.party, options.tag, time.perf_counter()
    prepared, series = run.prepare()
    n_g = len(prepared)
    salt = options.salt if options.salt is not None else os.urandom(SALT_BYTES)
    hello = pa.table({"salt": [salt], "set_size": [n_g]})
    for host in hosts:
        session.send(HELLO, host, hello, psi=tag, host=host)
    sizes: dict[str, int] = {me: n_g}
    for host in hosts:
        sizes[host] = _size(session.recv(HELLO_ACK, host, timeout=options.timeout, psi=tag, host=host), host)

    rng = _rng()
    scalar = SecretScalar.generate()
    with contextlib.ExitStack() as stack:
        multiplier = multiplier or stack.enter_context(_own_multiplier(options))
        log.debug("PSI guest: blinding %d ids", n_g)
        blinded = multiplier.hash_and_multiply(scalar, salt, prepared.normalized)  # a·H(g), in item order
        orders: dict[str, np.ndarray] = {}
        for host in hosts:
            order = rng.permutation(n_g)
            orders[host] = order
            _send_parts(
                session, GUEST_POINTS, host, {"point": blinded}, n_g, options.message_rows, take=order,
                psi=tag, host=host,
            )  # fmt: skip
        del blinded

        host_points: dict[str, np.ndarray] = {}
        for host in hosts:
            received = _recv_points(
                session, HOST_POINTS, host, options.timeout, sizes[host], psi=tag, host=host
            )
            host_points[host] = _gather(sizes[host], (multiplier.multiply(scalar, part) for part in received))

        matches: dict[str, np.ndarray] = {}
        present = np.ones(n_g, dtype=bool)
        for host in hosts:
            received = _recv_points(session, DOUBLE, host, options.timeout, n_g, psi=tag, host=host)
            double = _gather(n_g, received)  # b·a·H(g), in the host's order of receipt
            in_guest, in_host = match_points(double, host_points.pop(host))
            del double
            match = np.full(n_g, -1, dtype=np.int64)
            match[orders[host][in_guest]] = in_host
            matches[host] = match
            present &= match >= 0

    shared = np.flatnonzero(present)
    if options.order_key is None:
        shared = shared[rng.permutation(len(shared))]
    else:
        keys = hash_ids(prepared.normalized.take(pa.array(shared)), options.order_key)
        shared = shared[np.argsort(keys, kind="stable")]
    size = len(shared)
    empty = np.empty(0, np.int64)
    for host in hosts:
        if options.reveal == "all":
            columns, n, rows = (
                {"item": matches[host][shared], "position": np.arange(size)},
                size,
                options.message_rows,
            )
        else:  # guest-only: the host learns the size alone
            columns, n, rows = {"item": empty, "position": empty}, 0, 1
        _send_parts(session, RESULT, host, columns, n, rows, {"size": str(size)}, psi=tag, host=host)
    rows = prepared.rows[shared]
    log.info(
        "PSI guest '%s': %d of %d ids shared with %s in %.1f s",
        me,
        size,
        n_g,
        ", ".join(hosts),
        time.perf_counter() - started,
    )
    positions = {host: matches[host][shared] for host in hosts}
    return dataclasses.replace(
        _revealed(me, "guest", rows, series, sizes, prepared), host_positions=positions
    )


def run_host(
    channel: Channel | Session,
    ids: Any,
    guest: str,
    options: PsiOptions | None = None,
    *,
    column: str = "id",
    multiplier: ScalarMultiplier | None = None,
) -> PsiResult:
    """A host's side of the PSI with ``guest``; returns the host's ``PsiResult``.

    Under ``reveal="guest-only"`` the result carries only the size (``rows_revealed`` is False).
    """
    options = options or PsiOptions()
    me = channel.party
    if guest == me:
        raise ConfigError(f"the PSI guest must be another party than the host '{me}'")
    session = _session(channel, guest, (me,))
    session.uses(PSI)
    return session.guard(lambda: _host(_Run(session, ids, options, column, multiplier), guest))


def _host(run: _Run, guest: str) -> PsiResult:
    session, options, multiplier = run.session, run.options, run.multiplier
    me, tag, started = session.party, options.tag, time.perf_counter()
    prepared, series = run.prepare()
    hello = session.recv(HELLO, guest, timeout=options.timeout, psi=tag, host=me)
    n_g = _size(hello, guest)
    salt = bytes(one(hello, "salt"))
    if len(salt) < 16:
        raise ProtocolError(f"party '{guest}' sent no usable job salt")
    if options.salt is not None and options.salt != salt:
        raise ProtocolError(
            f"PSI settings differ between '{me}' and '{guest}': salt is set at '{me}' and differs from the guest's"
        )
    n_h = len(prepared)
    session.send(HELLO_ACK, guest, pa.table({"set_size": [n_h]}), psi=tag, host=me)

    rng = _rng()
    scalar = SecretScalar.generate()
    with contextlib.ExitStack() as stack:
        multiplier = multiplier or stack.enter_context(_own_multiplier(options))
        order = rng.permutation(n_h)
        blinded = multiplier.hash_and_multiply(scalar, salt, prepared.normalized)  # b·H(h), item order
        _send_parts(
            session, HOST_POINTS, guest, {"point": blinded}, n_h, options.message_rows, take=order,
            psi=tag, host=me,
        )  # fmt: skip
        del blinded
        for table, part, meta in _iter_parts(
            session, GUEST_POINTS, guest, options.timeout, n_g, psi=tag, host=me
        ):
            points = points_from_arrow(table.column("point"), peer=guest, tag=GUEST_POINTS.name)
            double = multiplier.multiply(scalar, points)  # b·a·H(g), in the order received
            reply = {"part": str(part), "parts": meta["parts"], "rows": str(n_g)}
            session.send(
                DOUBLE,
                guest,
                pa.table({"point": points_to_arrow(double)}).replace_schema_metadata(reply),
                psi=tag,
                host=me,
                part=part,
            )

    items: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    size = -1
    for table, _, meta in _iter_parts(session, RESULT, guest, options.timeout, None, psi=tag, host=me):
        try:
            size = int(meta["size"])
        except ValueError as exc:
            raise ProtocolError(f"party '{guest}' sent a PSI result with an unreadable size") from exc
        items.append(table.column("item").to_numpy())
        positions.append(table.column("position").to_numpy())
    if size < 0:
        raise ProtocolError(f"party '{guest}' sent a PSI result without its size")
    sizes = {me: n_h, guest: n_g}
    if options.reveal == "guest-only":
        log.info("PSI host '%s': intersection of %d ids (rows not revealed)", me, size)
        return PsiResult(
            me,
            "host",
            size,
            np.empty(0, np.int64),
            series.iloc[0:0],
            False,
            sizes,
            prepared.duplicates_dropped,
            shuffled_rows=prepared.rows[order],
        )
    item = np.concatenate(items).astype(np.int64, copy=False) if items else np.empty(0, np.int64)
    position = np.concatenate(positions).astype(np.int64, copy=False) if positions else np.empty(0, np.int64)
    if len(item) != size or (size and (item.min() < 0 or item.max() >= n_h or len(np.unique(item)) != size)):
        raise ProtocolError(f"party '{guest}' sent an invalid PSI result (items out of range or repeated)")
    if not np.array_equal(np.sort(position), np.arange(size)):
        raise ProtocolError(f"party '{guest}' sent an invalid PSI result (positions are not 0..{size - 1})")
    rows = np.empty(size, dtype=np.int64)
    rows[position] = prepared.rows[order[item]]
    log.info("PSI host '%s': %d of %d ids shared in %.1f s", me, size, n_h, time.perf_counter() - started)
    return _revealed(me, "host", rows, series, sizes, prepared)
