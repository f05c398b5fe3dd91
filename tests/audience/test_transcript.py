"""Transcript: no per-row value or per-row segment leaves its owner; every message is declared; the ledger is true."""

from __future__ import annotations

import json

import numpy as np

import vfl
from tests.audience.conftest import audience_options
from vfl.analytics.crosstab import Layout
from vfl.protocols.audience import AUDIENCE, frame_from_json
from vfl.protocols.catalog import ALL_PROTOCOLS, find
from vfl.transport import decode_table


def assert_no_raw_values(transcript, owners) -> None:
    """Raw float64 bytes of per-row metric values never appear in what their owner sends."""
    for party, column, frame in owners:
        blob = b"".join(m.payload for m in transcript if m.sender == party)
        values = frame[column].to_numpy(dtype=np.float64)
        hits = sum(np.float64(v).tobytes() in blob for v in values[:300])
        assert hits == 0, (party, column)


def test_no_per_row_value_or_segment_leaves_its_owner(market, host_keypairs):
    r, b = market["retailer"], market["bank"]
    result = vfl.simulate_audience(
        r, {"bank": b}, id="id", guest_name="retailer", keypairs=host_keypairs, workers=1, **audience_options(k=20)
    )  # fmt: skip
    shared = len(r.merge(b, on="id"))
    transcript = result.network.transcript
    names = {}
    for m in transcript:
        found = find(ALL_PROTOCOLS, m.tag)
        assert found is not None, m.tag
        names.setdefault(found[1].name, []).append(m)
    assert {"audience.cells", "audience.layout", "audience.rows", "audience.sealed", "audience.reply",
            "audience.release"} <= set(names)  # fmt: skip

    assert_no_raw_values(transcript, (("retailer", "spend", r), ("bank", "balance", b)))

    layout = Layout.from_dict(
        json.loads(decode_table(names["audience.layout"][0].payload)["layout"][0].as_py())
    )
    # the host learns the intersection size alone (reveal = "guest-only"): no item of its rows comes back
    results = names["psi.result"]
    assert results and all(m.receiver == "bank" and decode_table(m.payload).num_rows == 0 for m in results)
    assert layout.rows == shared  # the slots are sized by the size it learned
    # host -> guest: ciphertexts, one per two host rows (all of them, in its PSI order) and block, all distinct
    rows = [c for m in names["audience.rows"] for c in decode_table(m.payload)["ciphertext"].to_pylist()]
    assert layout.pair_bits and len(rows) == layout.ciphertexts(len(b)) == (len(b) + 1) // 2
    assert len(set(rows)) == len(rows)
    # guest -> host: as many ciphertexts as accumulators (per guest cell, not per row), then one released table
    (sealed,) = names["audience.sealed"]
    assert decode_table(sealed.payload).num_rows == layout.accumulators < shared
    (release,) = names["audience.release"]
    table = frame_from_json(decode_table(release.payload)["table"][0].as_py())
    assert len(table) == layout.guest_cells * layout.host_cells  # one record per cell, none per row
    withheld = table[table["suppressed"]]
    assert len(withheld) and withheld[["count", "sum_spend", "sum_balance"]].isna().all().all()
    assert (table.loc[~table["suppressed"], "count"] >= 20).all()
    # the guest's cells message lists categories only
    cells = json.loads(decode_table(names["audience.cells"][0].payload)["categories"][0].as_py())
    assert cells == {"age_band": ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]}

    # the ledgers list every released number with its epsilon and who saw it
    guest_ledger, host_ledger = result.ledgers["retailer"], result.ledgers["bank"]
    assert "audience" in guest_ledger.protocols
    counts = [e for e in guest_ledger.released if e["kind"] == "count" and e["table"] == "retailer x bank"]
    assert len(counts) == layout.guest_cells * layout.host_cells
    assert all(e["epsilon"] == layout.epsilon["count"] for e in counts)
    assert {tuple(e["seen_by"]) for e in counts if e["suppressed"]} == {("retailer",)}
    assert {tuple(e["seen_by"]) for e in counts if not e["suppressed"]} == {("retailer", "bank")}
    assert sum(layout.epsilon.values()) <= 1.0 + 1e-12
    host_counts = [e for e in host_ledger.released if e["kind"] == "count"]
    assert len(host_counts) == len(counts) and all(
        e["epsilon"] == layout.epsilon["count"] for e in host_counts
    )
    by_segment = [e for e in guest_ledger.released if e["table"] == "overlap by guest segment"]
    assert len(by_segment) == layout.guest_cells and all(e["seen_by"] == ["retailer"] for e in by_segment)
    learns = " ".join(host_ledger.learns)
    assert "released cross-tab" in learns and "guest's noise share" in " ".join(host_ledger.never_learns)
    assert set(AUDIENCE.never) == {"guest", "host"}
