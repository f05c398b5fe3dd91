"""The cells and slot layout of an encrypted cross-tab (:mod:`vfl.analytics.crosstab`).

Segment cells (mixed radix over each column's categories), metric quantization, and the ``Layout``: slot
width, slots per block and the blocks, agreed by guest and host (see :mod:`vfl.analytics.crosstab` for the
slot-width bound).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vfl.analytics.dp import AudienceOptions, noise_limit
from vfl.errors import CryptoError, DataError, IntegrityError, ProtocolError

Slot = tuple  # ("count", h) | ("sum", metric, h)


# ---------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------


def categories_of(
    frame: pd.DataFrame, columns: Sequence[str], options: AudienceOptions, party: str
) -> dict[str, tuple]:
    """The categories of each segment column, refused beyond ``max_categories`` or with missing values.

    A ``pandas.Categorical`` column gives its declared categories (all of them, in order: nothing
    data-dependent); any other column its sorted distinct values.
    """
    out: dict[str, tuple] = {}
    for col in columns:
        if col not in frame.columns:
            raise DataError(f"{party}: segment column {col!r} is not in the data")
        values = frame[col]
        if values.isna().any():
            raise DataError(f"{party}: segment column {col!r} has {int(values.isna().sum())} missing values")
        if isinstance(values.dtype, pd.CategoricalDtype):  # declared categories, in their order
            cats = tuple(values.cat.categories.tolist())
        else:  # observed values, sorted (they tell the peer which values occur in this party's data)
            cats = tuple(sorted(pd.unique(values).tolist(), key=str))
        options.check_categories(party, col, len(cats))
        out[col] = cats
    return out


def cell_codes(frame: pd.DataFrame | None, categories: Mapping[str, Sequence]) -> np.ndarray:
    """Mixed-radix cell index of each row (first column most significant); DataError for unknown values."""
    cols = list(categories)
    if not cols:
        return np.zeros(0 if frame is None else len(frame), dtype=np.int64)
    assert frame is not None
    code = np.zeros(len(frame), dtype=np.int64)
    for col in cols:
        cats = pd.Index(list(categories[col]))
        idx = cats.get_indexer(frame[col])
        if (idx < 0).any():
            bad = frame[col][idx < 0].iloc[0]
            raise DataError(f"segment column {col!r} has a value {bad!r} outside its declared categories")
        code = code * len(cats) + idx
    return code


def cell_labels(categories: Mapping[str, Sequence]) -> list[tuple]:
    """The label tuple of every cell, in cell-index order (``[()]`` with no segment columns)."""
    return list(itertools.product(*(list(c) for c in categories.values())))


def quantize(values: Any, bounds: tuple[float, float], fraction_bits: int, column: str) -> np.ndarray:
    """``round(clip(x, lo, hi) * 2^f)`` as int64; DataError for missing or non-numeric values."""
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"metric column {column!r} is not numeric") from None
    if np.isnan(x).any():
        raise DataError(
            f"metric column {column!r} has {int(np.isnan(x).sum())} missing values; impute them first"
        )
    lo, hi = bounds
    return np.rint(np.clip(x, lo, hi) * 2.0**fraction_bits).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Everything both parties must agree on to pack, fold, noise and unpack a cross-tab.

    The host builds it (it knows its categories) and sends it with the encrypted rows; the guest
    checks it against the job options (:meth:`to_dict` / :meth:`from_dict`).
    """

    key_bits: int
    rows: int
    guest_categories: dict[str, tuple]
    host_categories: dict[str, tuple]
    host_metrics: tuple[str, ...]
    guest_metrics: tuple[str, ...]
    bounds: dict[str, tuple[float, float]]
    fraction_bits: int
    epsilon: dict[str, float]  # per released number of each measure ("count" and metrics)
    slot_bits: int  # width of a count slot (it also holds a guest metric's sums)
    slots_per_block: int
    blocks: tuple[tuple[Slot, ...], ...] = field(repr=False)
    count_blocks: int = 1
    metric_bits: int = 0  # width of a host-metric slot (0: no host metric)
    mixed: bool = False  # one block per row: guest-metric accumulators are truncated to the count slots
    pair_bits: int = 0  # two rows a plaintext: the second row's offset (0: one row a plaintext)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def guest_cells(self) -> int:
        return math.prod(len(c) for c in self.guest_categories.values())

    @property
    def host_cells(self) -> int:
        return math.prod(len(c) for c in self.host_categories.values())

    @property
    def measures(self) -> tuple[str, ...]:
        return ("count", *self.host_metrics, *self.guest_metrics)

    def sensitivity(self, measure: str) -> int:
        if measure == "count":
            return 1
        lo, hi = self.bounds[measure]
        return max(1, math.ceil(max(abs(lo), abs(hi)) * 2**self.fraction_bits))

    @property
    def accumulators(self) -> int:
        """Sealed ciphertexts: per guest cell, every block and each guest metric's count blocks (twice if paired)."""
        return len(self.sealed_specs())

    @property
    def ciphertexts_per_row(self) -> float:
        """What the encrypting party pays per row: blocks, halved when two rows share a plaintext."""
        return len(self.blocks) / (2 if self.pair_bits else 1)

    def ciphertexts(self, rows: int) -> int:
        """Ciphertexts that carry ``rows`` rows (per block; two rows each when paired)."""
        return len(self.blocks) * (-(-rows // 2) if self.pair_bits else rows)

    @functools.cached_property
    def extent(self) -> int:
        """Bits of the largest signed value one row-half of an accumulator can hold, discarded parts included:
        the slots, or in a mixed block the guest metric's products ``R Q_g Q_h`` in the host-metric slots."""
        return max(_extent(self, b) for b in range(len(self.blocks)))

    def width(self, slot: Slot) -> int:
        return self.slot_bits if slot[0] == "count" else self.metric_bits

    def accumulator_specs(self) -> list[Accumulator]:
        """Every accumulator in :func:`fold`'s order: its slots (guest-metric sums as ``("sum", m, h)``),
        their widths, and for a truncated one the bits kept (the count slots of a mixed block)."""
        out: list[Accumulator] = []
        for g in range(self.guest_cells):
            for block in self.blocks:
                widths = tuple(self.width(s) for s in block)
                kept = sum(widths) if self.pair_bits else None
                out.append(Accumulator(block, widths, kept, self.extent - sum(widths), cell=g))
            for m in self.guest_metrics:
                for b in range(self.count_blocks):
                    counts = tuple(s for s in self.blocks[b] if s[0] == "count")
                    kept = len(counts) * self.slot_bits if (self.mixed or self.pair_bits) else None
                    high = self.extent - (kept or 0) if kept is not None else 0
                    slots = tuple(("sum", m, s[1]) for s in counts)
                    out.append(Accumulator(slots, (self.slot_bits,) * len(counts), kept, high, cell=g))
        return out

    def sealed_specs(self) -> list[Accumulator]:
        """The ciphertexts the folding party seals, in :func:`fold`'s order: one per accumulator, or when
        paired every accumulator's low half (its rows at even positions) then every high half (odd positions)
        at bit ``pair_bits``, the other half below or above it discarded (statistically masked)."""
        base = self.accumulator_specs()
        if not self.pair_bits:
            return base
        w, top = self.pair_bits, self.pair_bits + self.extent
        low = [dataclasses.replace(a, high_bits=top - a.kept_bits) for a in base]
        high = [
            dataclasses.replace(a, shift=w, low_bits=self.extent, high_bits=self.extent - a.kept_bits)
            for a in base
        ]
        return low + high

    def accumulator_slots(self) -> list[tuple[Slot, ...]]:
        """The slots of every accumulator in :func:`fold`'s order (guest-metric blocks as ``("sum", m, h)``)."""
        return [a.slots for a in self.accumulator_specs()]

    def positions(self) -> dict[Slot, tuple[int, int]]:
        """``slot -> (block, bit offset)``: slots sit one after the other, each ``width(slot)`` bits."""
        out = {}
        for b, block in enumerate(self.blocks):
            shift = 0
            for s in block:
                out[s] = (b, shift)
                shift += self.width(s)
        return out

    def slot_sensitivities(self, slots: Sequence[Slot]) -> list[int]:
        return [self.sensitivity("count" if s[0] == "count" else s[1]) for s in slots]

    def slot_epsilons(self, slots: Sequence[Slot]) -> list[float]:
        return [self.epsilon["count" if s[0] == "count" else s[1]] for s in slots]

    # -- wire ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "key_bits": self.key_bits,
            "rows": self.rows,
            "guest_categories": {c: list(v) for c, v in self.guest_categories.items()},
            "host_categories": {c: list(v) for c, v in self.host_categories.items()},
            "host_metrics": list(self.host_metrics),
            "guest_metrics": list(self.guest_metrics),
            "bounds": {c: list(b) for c, b in self.bounds.items()},
            "fraction_bits": self.fraction_bits,
            "epsilon": dict(self.epsilon),
            "slot_bits": self.slot_bits,
            "metric_bits": self.metric_bits,
            "mixed": self.mixed,
            "pair_bits": self.pair_bits,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        """Rebuild and re-derive (slot width and blocks are recomputed; a mismatch is refused)."""
        layout = _build(
            int(data["key_bits"]),
            int(data["rows"]),
            {c: tuple(v) for c, v in data["guest_categories"].items()},
            {c: tuple(v) for c, v in data["host_categories"].items()},
            tuple(data["host_metrics"]),
            tuple(data["guest_metrics"]),
            {c: (float(b[0]), float(b[1])) for c, b in data["bounds"].items()},
            int(data["fraction_bits"]),
            {m: float(e) for m, e in data["epsilon"].items()},
            pair=bool(data.get("pair_bits", 0)),
        )
        for name in ("slot_bits", "metric_bits", "mixed", "pair_bits"):
            if getattr(layout, name) != type(getattr(layout, name))(data[name]):
                what = {
                    "slot_bits": "slot width",
                    "metric_bits": "metric slot width",
                    "pair_bits": "row pairing",
                }.get(name, "block layout")
                raise IntegrityError(f"layout: {what} {data[name]} does not follow from its settings")
        return layout


def make_layout(
    options: AudienceOptions,
    *,
    guest: str,
    host: str,
    guest_categories: Mapping[str, Sequence],
    host_categories: Mapping[str, Sequence],
    rows: int,
    key_bits: int,
    tables: int = 1,
    pair: bool = False,
) -> Layout:
    """The layout of the cross-tab of ``guest`` x ``host`` for at most ``rows`` shared rows.

    Segment columns and metrics come from ``options`` (``options.segments[party]``,
    ``options.metrics[party]``); the categories are each party's declared or observed values. With
    ``pair``, two rows share a plaintext whenever both fit (``pair_bits``).
    """
    for party, cats in ((guest, guest_categories), (host, host_categories)):
        want = list(options.segments.get(party, ()))
        if list(cats) != want:
            raise DataError(f"{party}: categories given for {list(cats)}, but its segment columns are {want}")
        for col, values in cats.items():
            options.check_categories(party, col, len(values))
    host_metrics = tuple(options.metrics.get(host, ()))
    guest_metrics = tuple(options.metrics.get(guest, ()))
    measures = ("count", *host_metrics, *guest_metrics)
    cells = math.prod(len(c) for c in guest_categories.values()) * math.prod(
        len(c) for c in host_categories.values()
    )
    eps = {m: options.epsilon_per_number(m, measures, cells, tables) for m in measures}
    bounds = {m: options.bounds[m] for m in (*host_metrics, *guest_metrics)}
    return _build(
        key_bits,
        rows,
        {c: tuple(v) for c, v in guest_categories.items()},
        {c: tuple(v) for c, v in host_categories.items()},
        host_metrics,
        guest_metrics,
        bounds,
        options.fraction_bits,
        eps,
        pair=pair,
    )


def verify_layout(
    received: Mapping[str, Any],
    options: AudienceOptions,
    *,
    guest: str,
    host: str,
    key_bits: int,
    max_rows: int,
    tables: int = 1,
) -> Layout:
    """Guest: accept the host's layout message only if it follows from our own job options.

    The layout is rebuilt from the options, the received categories and row bound; any other setting
    that differs (epsilon per number, metrics, bounds, fraction bits, slot width, key size) is refused
    naming it, so a host cannot shrink the noise or widen the slots behind the options' back.
    """
    try:
        theirs = Layout.from_dict(received)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"the layout from {host!r} is malformed: {exc}") from None
    if theirs.rows > max_rows:
        raise ProtocolError(
            f"the layout from {host!r} admits {theirs.rows} rows, more than the {max_rows} shared"
        )
    ours = make_layout(
        options,
        guest=guest,
        host=host,
        guest_categories=theirs.guest_categories,
        host_categories=theirs.host_categories,
        rows=theirs.rows,
        key_bits=key_bits,
        tables=tables,
        pair=theirs.pair_bits > 0,
    )
    a, b = ours.to_dict(), theirs.to_dict()
    differ = sorted(k for k in a if a[k] != b[k])
    if differ:
        raise ProtocolError(f"the layout from {host!r} disagrees with the job options on {', '.join(differ)}")
    return theirs


def _build(
    key_bits: int,
    rows: int,
    guest_categories: dict[str, tuple],
    host_categories: dict[str, tuple],
    host_metrics: tuple[str, ...],
    guest_metrics: tuple[str, ...],
    bounds: dict[str, tuple[float, float]],
    fraction_bits: int,
    epsilon: dict[str, float],
    *,
    pair: bool = False,
) -> Layout:
    if rows < 1:
        raise DataError("a cross-tab needs at least one shared row")
    probe = Layout(key_bits, rows, guest_categories, host_categories, host_metrics, guest_metrics, bounds,
                   fraction_bits, epsilon, 1, 1, ((),))  # fmt: skip
    widths = slot_widths(probe)
    room = key_bits - 2
    if max(widths.count, widths.metric) > room:
        raise CryptoError(
            f"a {max(widths.count, widths.metric)}-bit slot does not fit a {key_bits}-bit key; narrow the metric bounds"
        )
    h_cells = probe.host_cells
    count_slots = [("count", h) for h in range(h_cells)]
    metric_slots = [("sum", m, h) for m in host_metrics for h in range(h_cells)]
    mixed_block = tuple(count_slots + metric_slots)
    mixed_bits = _block_extent(mixed_block, widths.count, widths.metric, widths.products, True)
    if (
        guest_metrics and metric_slots and mixed_bits + TRUNCATION_MASK_BITS + 1 <= room
    ):  # one ciphertext a row
        blocks, count_blocks = [mixed_block], 1
        metric_bits, mixed = widths.metric, True
    elif guest_metrics:  # count slots apart: the guest raises them to its metric values
        count_part = _chunk(count_slots, widths.count, room)
        blocks = count_part + _chunk(metric_slots, widths.metric, room)
        count_blocks, metric_bits, mixed = len(count_part), widths.metric, False
    else:
        blocks = _chunk(count_slots, widths.count, room, then=(metric_slots, widths.metric))
        count_blocks = sum(1 for b in blocks if any(s[0] == "count" for s in b))
        metric_bits, mixed = widths.metric, False
    layout = Layout(key_bits, rows, guest_categories, host_categories, host_metrics, guest_metrics, bounds,
                    fraction_bits, epsilon, widths.count, room // widths.count, tuple(blocks), count_blocks,
                    metric_bits if metric_slots else 0, mixed)  # fmt: skip
    half = layout.extent + TRUNCATION_MASK_BITS + 1  # a discarded low half plus its mask never carries
    if pair and half + layout.extent + TRUNCATION_MASK_BITS + 1 <= room:
        layout = dataclasses.replace(layout, pair_bits=half)
    return layout


def _block_extent(
    block: Sequence[Slot], count_bits: int, metric_bits: int, products: int, mixed: bool
) -> int:
    """Bits of a block's largest signed accumulator value: its slots; in a mixed block also the products
    ``R Q_g Q_h`` that a guest metric leaves in the host-metric slots (below ``2^(offset + bitlen + 1)``)."""
    widths = [count_bits if s[0] == "count" else metric_bits for s in block]
    extent = sum(widths)
    if mixed and products and any(s[0] != "count" for s in block):
        last = max(i for i, s in enumerate(block) if s[0] != "count")
        extent = max(extent, sum(widths[:last]) + products.bit_length() + 2)
    return extent


def _extent(layout: Layout, b: int) -> int:
    widths = slot_widths(layout)
    return _block_extent(
        layout.blocks[b], layout.slot_bits, layout.metric_bits, widths.products, layout.mixed
    )


TRUNCATION_MASK_BITS = 64
"""Statistical mask (bits) over the discarded host-metric part of a truncated accumulator."""


@dataclass(frozen=True)
class Accumulator:
    """One accumulator the guest seals: its slots, their widths and, if truncated, the low bits kept."""

    slots: tuple[Slot, ...]
    widths: tuple[int, ...]
    kept_bits: int | None = None  # truncated: only ``kept_bits`` (from bit ``shift``) come back decrypted
    high_bits: int = 0  # truncated: bits of the discarded part above them
    cell: int = 0  # the folding party's cell it belongs to
    shift: int = 0  # paired: where its kept bits start (the other row-half's discarded part below them)
    low_bits: int = 0  # paired: bits of the discarded part below them


@dataclass(frozen=True)
class SlotWidths:
    """Tight slot widths (bits, sign and a margin bit included) from the row count and the bounds."""

    count: int  # counts, and a guest metric's sums (they land in the count slots)
    metric: int  # a host metric's sums
    products: int  # the largest product sum ``R Q_g Q_h`` a guest metric leaves in a host-metric slot


def slot_widths(layout: Layout) -> SlotWidths:
    """``bitlen(max |slot value|) + 2`` per kind of slot: ``R Q_m + 2 T_m`` after the fold and both shares.

    In a mixed block a guest metric raises the host-metric slots too: the products ``R Q_g Q_h`` carry into
    the slots above them (never decrypted: the host returns the count slots only); ``products`` sizes that
    discarded part (:attr:`Layout.extent`).
    """
    rows = layout.rows

    def peak(measure: str) -> int:
        d = layout.sensitivity(measure)
        return rows * d + 2 * noise_limit(layout.epsilon[measure], d)

    count = max(peak(m) for m in ("count", *layout.guest_metrics))
    metric = max((peak(m) for m in layout.host_metrics), default=0)
    products = max(
        (
            rows * layout.sensitivity(g) * layout.sensitivity(h)
            for g in layout.guest_metrics
            for h in layout.host_metrics
        ),
        default=0,
    )
    return SlotWidths(count.bit_length() + 2, metric.bit_length() + 2, products)


def _chunk(
    slots: list[Slot], width: int, room: int, then: tuple[list[Slot], int] | None = None
) -> list[tuple[Slot, ...]]:
    """Slots in order into as few blocks of ``room`` bits as they fill (``then``: more slots of another width)."""
    seq = [(s, width) for s in slots] + ([(s, then[1]) for s in then[0]] if then else [])
    blocks: list[tuple[Slot, ...]] = []
    current: list[Slot] = []
    used = 0
    for s, w in seq:
        if current and used + w > room:
            blocks.append(tuple(current))
            current, used = [], 0
        current.append(s)
        used += w
    if current:
        blocks.append(tuple(current))
    return blocks
