"""ECDH private set intersection over Curve25519: the guest role and the host role (DESIGN.md §5).

Message flow between the guest and each host ``h`` (tags are ``<tag>/<h>/<step>[/<part>]``, with
``tag="psi"`` by default):

1. ``hello`` guest -> host: protocol version, normalization settings, reveal mode, the job salt and
   the guest's set size. ``hello-ack`` host -> guest: the host's settings and set size. Either side
   refuses to go on with a ``ProtocolError`` naming every setting that differs.
2. ``guest-points`` guest -> host: ``a·H(g)`` for the guest's ids, shuffled (a fresh shuffle per host).
3. ``host-points`` host -> guest: ``b·H(h)`` for the host's ids, shuffled. The host computes these
   while the guest computes step 2, so both parties' cores are busy.
4. ``guest-points-double`` host -> guest: ``b·a·H(g)``, in the order received.
5. The guest computes ``a·b·H(h)`` and matches it against ``b·a·H(g)``; with several hosts it keeps
   the ids present at every host, and draws a random **shared order** for them.
6. ``result`` guest -> host: which of the host's shuffled items are in the intersection and their
   position in the shared order (``reveal="all"``), or only the intersection size
   (``reveal="guest-only"``).

Points travel as Arrow ``fixed_size_binary(32)`` columns, cut into messages of at most
``message_rows`` rows (metadata ``part``/``parts``). Nothing here reads a file or a config.

What each side learns: the guest learns which of its ids are shared with every host and every
host's set size; a host learns the guest's set size, and (``reveal="all"``) which of its own rows
are in the intersection and their shared positions. ``a·H(g)`` are pseudo-random points to the
host: without ``a`` they reveal nothing about ids outside the intersection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from vfl.errors import ConfigError, ProtocolError, VflError
from vfl.psi.ecdh import ScalarMultiplier, SecretScalar
from vfl.psi.hashing import POINT_BYTES, POINT_DTYPE, SALT_BYTES, hash_ids
from vfl.psi.ids import PreparedIds, as_id_series, prepare_ids
from vfl.psi.options import PsiOptions, PsiResult
from vfl.transport.channel import Channel

log = logging.getLogger(__name__)

POINT_TYPE = pa.binary(POINT_BYTES)

__all__ = ["PsiOptions", "PsiResult", "run_guest", "run_host"]


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
    channel: Channel,
    to: str,
    tag: str,
    columns: dict[str, Any],
    n: int,
    rows: int,
    meta: dict[str, str] | None = None,
) -> None:
    """Send a table of ``n`` rows as ``<tag>/<i>`` messages of at most ``rows`` rows each."""
    parts = max(1, -(-n // rows))
    for i in range(parts):
        lo, hi = i * rows, min(n, (i + 1) * rows)
        arrays = {
            name: points_to_arrow(values[lo:hi]) if values.dtype == POINT_DTYPE else pa.array(values[lo:hi])
            for name, values in columns.items()
        }
        metadata = {"part": str(i), "parts": str(parts), "rows": str(n), **(meta or {})}
        channel.send(to, f"{tag}/{i}", pa.table(arrays).replace_schema_metadata(metadata))


def _send_abort(channel: Channel, to: str, tag: str, reason: str) -> None:
    """Tell a peer waiting on ``<tag>/0`` that this run stopped (so it fails now instead of timing out)."""
    with contextlib.suppress(VflError):
        channel.send(
            to,
            f"{tag}/0",
            pa.table({"x": pa.array([], pa.int8())}).replace_schema_metadata({"abort": reason}),
        )


def _iter_parts(
    channel: Channel, frm: str, tag: str, timeout: float | None, expected_rows: int | None
) -> Iterator[tuple[pa.Table, int, dict[str, str]]]:
    """Receive the messages ``<tag>/0..`` sent by ``_send_parts``, yielding ``(table, part, meta)`` as they arrive.

    ``meta`` is the first part's metadata (part count, total rows, and anything the sender added).
    """
    first = channel.recv(frm, f"{tag}/0", timeout)
    meta = {k.decode(): v.decode() for k, v in (first.schema.metadata or {}).items()}
    if "abort" in meta:
        raise ProtocolError(f"party '{frm}' stopped the PSI: {meta['abort']}")
    try:
        parts, total = int(meta["parts"]), int(meta["rows"])
    except (KeyError, ValueError) as exc:
        raise ProtocolError(
            f"message '{tag}/0' from '{frm}' lacks its part count; the peer runs another protocol version"
        ) from exc
    if expected_rows is not None and total != expected_rows:
        raise ProtocolError(f"party '{frm}' announced {expected_rows} rows but sends {total} in '{tag}'")
    received = first.num_rows
    yield first, 0, meta
    for i in range(1, parts):
        table = channel.recv(frm, f"{tag}/{i}", timeout)
        received += table.num_rows
        yield table, i, meta
    if received != total:
        raise ProtocolError(f"party '{frm}' sent {received} rows in '{tag}' but announced {total}")


def _column(table: pa.Table, name: str, peer: str, tag: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ProtocolError(
            f"message '{tag}' from '{peer}' has no column '{name}' (columns: {table.column_names})"
        )
    return table.column(name)


def _recv_points(
    channel: Channel, frm: str, tag: str, timeout: float | None, expected: int
) -> Iterator[np.ndarray]:
    for table, _, _ in _iter_parts(channel, frm, tag, timeout, expected):
        yield points_from_arrow(_column(table, "point", frm, tag), peer=frm, tag=tag)


# --------------------------------------------------------------------------------------------
# Settings agreement


def _settings_table(settings: dict[str, str]) -> pa.Table:
    return pa.table(
        {
            "key": pa.array(list(settings), pa.string()),
            "value": pa.array(list(settings.values()), pa.string()),
        }
    )


def _send_settings(channel: Channel, to: str, tag: str, settings: dict[str, str]) -> None:
    """Send a key/value settings table as the single part ``<tag>/0`` (readable with ``_iter_parts``)."""
    meta = {"part": "0", "parts": "1", "rows": str(len(settings))}
    channel.send(to, f"{tag}/0", _settings_table(settings).replace_schema_metadata(meta))


def _table_settings(table: pa.Table, peer: str, tag: str) -> dict[str, str]:
    keys = _column(table, "key", peer, tag).to_pylist()
    values = _column(table, "value", peer, tag).to_pylist()
    return dict(zip(keys, values, strict=True))


def _differences(mine: dict[str, str], theirs: dict[str, str], me: str, peer: str) -> str | None:
    """``None`` when the shared settings agree, else a sentence naming each setting that differs."""
    diffs = [
        f"{key} is {mine.get(key, '<unset>')} at '{me}' but {theirs.get(key, '<unset>')} at '{peer}'"
        for key in sorted(set(mine) | set(theirs))
        if mine.get(key) != theirs.get(key)
    ]
    if not diffs:
        return None
    return (
        f"PSI settings differ between '{me}' and '{peer}': {'; '.join(diffs)}; every party must use the same "
        "protocol version, id normalization and reveal mode"
    )


def _size(settings: dict[str, str], peer: str) -> int:
    try:
        size = int(settings.pop("set_size"))
    except (KeyError, ValueError) as exc:
        raise ProtocolError(
            f"party '{peer}' did not say how many ids it has; it runs another protocol version"
        ) from exc
    if size < 0:
        raise ProtocolError(f"party '{peer}' announced a negative set size")
    return size


# --------------------------------------------------------------------------------------------
# Roles


def _prepare(ids: Any, options: PsiOptions, column: str) -> tuple[PreparedIds, Any]:
    series = as_id_series(ids)
    return prepare_ids(
        series, normalization=options.normalization, dedupe=options.dedupe, column=column
    ), series


def _own_multiplier(options: PsiOptions) -> ScalarMultiplier:
    """A worker pool for this run alone, when the caller did not share one."""
    return ScalarMultiplier(
        workers=options.workers, chunk_size=options.chunk_size, parallel_threshold=options.parallel_threshold
    )


def _rng() -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(16), "big")))


def run_guest(
    channel: Channel,
    ids: Any,
    hosts: list[str],
    options: PsiOptions | None = None,
    *,
    column: str = "id",
    multiplier: ScalarMultiplier | None = None,
) -> PsiResult:
    """The guest's side of the PSI with every host in ``hosts``; returns the guest's ``PsiResult``.

    ``ids`` is the guest's id column (strings or integers); ``column`` only names it in error
    messages. ``multiplier`` lets the caller share a worker pool between runs.
    """
    options = options or PsiOptions()
    me = channel.party
    if not hosts:
        raise ConfigError("a PSI needs at least one host")
    if len(set(hosts)) != len(hosts) or me in hosts:
        raise ConfigError(f"PSI hosts must be distinct and differ from the guest '{me}', got {hosts}")
    tag = options.tag
    started = time.perf_counter()
    try:
        prepared, series = _prepare(ids, options, column)
    except VflError as exc:
        for host in hosts:
            _send_abort(
                channel, host, f"{tag}/{host}/hello", f"the guest's ids are unusable ({type(exc).__name__})"
            )
        raise
    n_g = len(prepared)
    salt = options.salt if options.salt is not None else os.urandom(SALT_BYTES)
    mine = options.settings()
    hello = {**mine, "salt": salt.hex(), "set_size": str(n_g)}
    for host in hosts:
        _send_settings(channel, host, f"{tag}/{host}/hello", hello)

    sizes: dict[str, int] = {me: n_g}
    problems: list[str] = []
    for host in hosts:
        ack_tag = f"{tag}/{host}/hello-ack"
        ack = channel.recv(host, ack_tag, options.timeout)
        theirs = _table_settings(ack, host, ack_tag)
        status = theirs.pop("status", "missing")
        if status != "ok":
            problems.append(f"host '{host}' refused to start: {status}")
            continue
        sizes[host] = _size(theirs, host)
        diff = _differences(mine, theirs, me, host)
        if diff:
            problems.append(diff)
    if problems:
        for host in hosts:
            _send_abort(
                channel, host, f"{tag}/{host}/guest-points", "the parties disagree on the PSI settings"
            )
        raise ProtocolError("; ".join(problems))

    rng = _rng()
    scalar = SecretScalar.generate()
    with contextlib.ExitStack() as stack:
        multiplier = multiplier or stack.enter_context(_own_multiplier(options))
        log.debug("PSI guest: settings agreed, blinding %d ids", n_g)
        blinded = multiplier.hash_and_multiply(scalar, salt, prepared.normalized)  # a·H(g), in item order
        log.debug("PSI guest: sending a·H(g)")
        orders: dict[str, np.ndarray] = {}
        for host in hosts:
            order = rng.permutation(n_g)
            orders[host] = order
            _send_parts(
                channel,
                host,
                f"{tag}/{host}/guest-points",
                {"point": blinded[order]},
                n_g,
                options.message_rows,
            )
        del blinded

        host_points: dict[str, np.ndarray] = {}
        for host in hosts:
            pieces = [
                multiplier.multiply(scalar, part)
                for part in _recv_points(
                    channel, host, f"{tag}/{host}/host-points", options.timeout, sizes[host]
                )
            ]
            host_points[host] = np.concatenate(pieces) if pieces else np.empty(0, POINT_DTYPE)  # a·b·H(h)

        log.debug("PSI guest: computed a·b·H(h) for every host")
        matches: dict[str, np.ndarray] = {}
        present = np.ones(n_g, dtype=bool)
        for host in hosts:
            pieces = list(
                _recv_points(channel, host, f"{tag}/{host}/guest-points-double", options.timeout, n_g)
            )
            double = np.concatenate(pieces) if pieces else np.empty(0, POINT_DTYPE)  # b·a·H(g), host's order
            _, in_guest, in_host = np.intersect1d(
                double, host_points.pop(host), assume_unique=False, return_indices=True
            )
            match = np.full(n_g, -1, dtype=np.int64)
            match[orders[host][in_guest]] = in_host
            matches[host] = match
            present &= match >= 0

    log.debug("PSI guest: matched")
    shared = np.flatnonzero(present)
    if options.order_key is None:
        shared = shared[rng.permutation(len(shared))]
    else:
        keys = hash_ids(prepared.normalized.take(pa.array(shared)), options.order_key)
        shared = shared[np.argsort(keys, kind="stable")]
    size = len(shared)
    for host in hosts:
        result_tag = f"{tag}/{host}/result"
        if options.reveal == "all":
            columns = {"item": matches[host][shared], "position": np.arange(size, dtype=np.int64)}
            _send_parts(channel, host, result_tag, columns, size, options.message_rows, {"size": str(size)})
        else:
            _send_parts(channel, host, result_tag, {"item": np.empty(0, np.int64)}, 0, 1, {"size": str(size)})
    rows = prepared.rows[shared]
    log.info(
        "PSI guest '%s': %d of %d ids shared with %s in %.1f s",
        me,
        size,
        n_g,
        ", ".join(hosts),
        time.perf_counter() - started,
    )
    return PsiResult(
        party=me,
        role="guest",
        size=size,
        rows=rows,
        ids=series.iloc[rows].reset_index(drop=True),
        rows_revealed=True,
        set_sizes=sizes,
        duplicates_dropped=prepared.duplicates_dropped,
    )


def run_host(
    channel: Channel,
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
    tag = f"{options.tag}/{me}"
    started = time.perf_counter()
    hello_tag = f"{tag}/hello"
    hello = pa.concat_tables([t for t, _, _ in _iter_parts(channel, guest, hello_tag, options.timeout, None)])
    theirs = _table_settings(hello, guest, hello_tag)
    try:
        prepared, series = _prepare(ids, options, column)
    except VflError as exc:
        channel.send(
            guest,
            f"{tag}/hello-ack",
            _settings_table({"status": f"the host's ids are unusable ({type(exc).__name__})"}),
        )
        raise
    n_h = len(prepared)
    mine = options.settings()
    n_g = _size(theirs, guest)
    salt_hex = theirs.pop("salt", "")
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        salt = b""
    problem = _differences(mine, theirs, me, guest)
    if problem is None and len(salt) < 16:
        problem = f"party '{guest}' sent no usable job salt"
    if problem is None and options.salt is not None and options.salt != salt:
        problem = f"PSI settings differ between '{me}' and '{guest}': salt is set at '{me}' and differs from the guest's"
    status = "ok" if problem is None else problem
    channel.send(guest, f"{tag}/hello-ack", _settings_table({**mine, "set_size": str(n_h), "status": status}))
    if problem is not None:
        raise ProtocolError(problem)

    rng = _rng()
    scalar = SecretScalar.generate()
    with contextlib.ExitStack() as stack:
        multiplier = multiplier or stack.enter_context(_own_multiplier(options))
        order = rng.permutation(n_h)
        shuffled = prepared.normalized.take(pa.array(order))
        blinded = multiplier.hash_and_multiply(scalar, salt, shuffled)  # b·H(h), shuffled
        del shuffled
        log.debug("PSI host: sending b·H(h)")
        _send_parts(channel, guest, f"{tag}/host-points", {"point": blinded}, n_h, options.message_rows)
        del blinded
        points_tag = f"{tag}/guest-points"
        for table, part, meta in _iter_parts(channel, guest, points_tag, options.timeout, n_g):
            points = points_from_arrow(_column(table, "point", guest, points_tag), peer=guest, tag=points_tag)
            double = multiplier.multiply(scalar, points)  # b·a·H(g), in the order received
            reply = {"part": str(part), "parts": meta["parts"], "rows": str(n_g)}
            channel.send(
                guest,
                f"{tag}/guest-points-double/{part}",
                pa.table({"point": points_to_arrow(double)}).replace_schema_metadata(reply),
            )

    log.debug("PSI host: sent b·a·H(g), waiting for the result")
    result_tag = f"{tag}/result"
    items: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    size = -1
    for table, _, meta in _iter_parts(channel, guest, result_tag, options.timeout, None):
        size = int(meta.get("size", -1))
        if options.reveal == "all":
            items.append(_column(table, "item", guest, result_tag).to_numpy())
            positions.append(_column(table, "position", guest, result_tag).to_numpy())
    if size < 0:
        raise ProtocolError(f"party '{guest}' sent a PSI result without its size")
    sizes = {me: n_h, guest: n_g}
    if options.reveal == "guest-only":
        log.info(
            "PSI host '%s': intersection of %d ids (rows not revealed) in %.1f s",
            me,
            size,
            time.perf_counter() - started,
        )
        return PsiResult(
            me,
            "host",
            size,
            np.empty(0, np.int64),
            series.iloc[0:0],
            False,
            sizes,
            prepared.duplicates_dropped,
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
    return PsiResult(
        party=me,
        role="host",
        size=size,
        rows=rows,
        ids=series.iloc[rows].reset_index(drop=True),
        rows_revealed=True,
        set_sizes=sizes,
        duplicates_dropped=prepared.duplicates_dropped,
    )
