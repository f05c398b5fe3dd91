"""Which party encrypts a cross-tab's rows (DESIGN.md §13): the one whose rows cost fewer ciphertexts.

Today's direction has the host encrypt its rows under its own key and the guest fold them by its cell. The
cross-tab is symmetric: the guest can as well encrypt its rows under *its* key and the host fold them by the
host's cell. Both layouts are built with row pairing (two rows a plaintext where they fit); the guest
encrypts when its rows cost strictly fewer ciphertexts per row, ties keep the host encrypting. The chosen
layout is written from the folding party's side (its cells are the layout's "guest" cells, the encrypting
party's the "host" cells); :func:`oriented` turns the decoded table back into guest cells x host cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vfl.analytics.crosstab import CrossTab
from vfl.analytics.dp import AudienceOptions
from vfl.analytics.layout import Layout, make_layout

HOST, GUEST = "host", "guest"
Side = tuple[str, Mapping[str, Sequence]]  # a party's name and its segment categories


@dataclass(frozen=True)
class Plan:
    """The direction of one cross-tab: who encrypts, the folding layout and the table's own layout."""

    encrypts: str  # "host" (today's direction) or "guest"
    layout: Layout  # from the folding party's side (it folds by the layout's guest cells)
    table: Layout  # guest cells x host cells: labels, measures and epsilon of the released table


def plan(options: AudienceOptions, guest: Side, host: Side, *, rows: int, key_bits: int) -> Plan:
    """Both directions' layouts (rows paired where two fit a plaintext); the cheaper one to encrypt.
    ``guest``, ``host``: each party's name and segment categories."""

    def layout(folder: Side, encryptor: Side, pair: bool) -> Layout:
        return make_layout(options, guest=folder[0], host=encryptor[0], guest_categories=folder[1],
                           host_categories=encryptor[1], rows=rows, key_bits=key_bits, pair=pair)  # fmt: skip

    today, swapped = layout(guest, host, True), layout(host, guest, True)
    if swapped.ciphertexts_per_row < today.ciphertexts_per_row:
        return Plan(GUEST, swapped, layout(guest, host, False))
    return Plan(HOST, today, layout(guest, host, False))


def oriented(table: CrossTab, plan: Plan) -> CrossTab:
    """The decoded table as guest cells x host cells (transposed when the guest encrypted)."""
    if plan.encrypts == HOST:
        return table
    return CrossTab(plan.table, table.counts.T.copy(), {m: s.T.copy() for m, s in table.sums.items()})


__all__ = ["GUEST", "HOST", "Plan", "oriented", "plan"]
