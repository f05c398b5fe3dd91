"""The cells and slot layout of an encrypted cross-tab (:mod:`vfl.analytics.crosstab`).

Segment cells (mixed radix over each column's categories), metric quantization, and the ``Layout``: slot
width, slots per block and the blocks, agreed by guest and host (see :mod:`vfl.analytics.crosstab` for the
slot-width bound).
"""

from __future__ import annotations

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
    slot_bits: int
    slots_per_block: int
    blocks: tuple[tuple[Slot, ...], ...] = field(repr=False)
    count_blocks: int = 1

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
        """Ciphertexts the guest sends back: per guest cell, every block and each guest metric's count blocks."""
        return self.guest_cells * (len(self.blocks) + len(self.guest_metrics) * self.count_blocks)

    def accumulator_slots(self) -> list[tuple[Slot, ...]]:
        """The slots of every accumulator in :func:`fold`'s order (guest-metric blocks as ``("sum", m, h)``)."""
        out: list[tuple[Slot, ...]] = []
        for _g in range(self.guest_cells):
            out.extend(self.blocks)
            for m in self.guest_metrics:
                for b in range(self.count_blocks):
                    out.append(tuple(("sum", m, s[1]) for s in self.blocks[b]))
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
        )
        if layout.slot_bits != int(data["slot_bits"]):
            raise IntegrityError(f"layout: slot width {data['slot_bits']} does not follow from its settings")
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
) -> Layout:
    """The layout of the cross-tab of ``guest`` x ``host`` for at most ``rows`` shared rows.

    Segment columns and metrics come from ``options`` (``options.segments[party]``,
    ``options.metrics[party]``); the categories are each party's declared or observed values.
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
) -> Layout:
    if rows < 1:
        raise DataError("a cross-tab needs at least one shared row")
    probe = Layout(key_bits, rows, guest_categories, host_categories, host_metrics, guest_metrics, bounds,
                   fraction_bits, epsilon, 1, 1, ((),))  # fmt: skip
    peak = 0
    for m in probe.measures:
        d = probe.sensitivity(m)
        peak = max(peak, rows * d + 2 * noise_limit(epsilon[m], d))
    slot_bits = peak.bit_length() + 2
    per = (key_bits - 2) // slot_bits
    if per < 1:
        raise CryptoError(
            f"a {slot_bits}-bit slot does not fit a {key_bits}-bit key; narrow the metric bounds"
        )
    h_cells = probe.host_cells
    count_slots = [("count", h) for h in range(h_cells)]
    metric_slots = [("sum", m, h) for m in host_metrics for h in range(h_cells)]

    def chunk(slots: list[Slot]) -> list[tuple[Slot, ...]]:
        return [tuple(slots[i : i + per]) for i in range(0, len(slots), per)]

    if guest_metrics:
        count_part = chunk(count_slots)
        blocks = count_part + chunk(metric_slots)
        count_blocks = len(count_part)
    else:
        blocks = chunk(count_slots + metric_slots)
        count_blocks = -(-h_cells // per)
    return Layout(key_bits, rows, guest_categories, host_categories, host_metrics, guest_metrics, bounds,
                  fraction_bits, epsilon, slot_bits, per, tuple(blocks), count_blocks)  # fmt: skip
