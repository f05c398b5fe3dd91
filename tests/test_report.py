"""The report: ReportData round trip, byte-identical re-rendering, every section, and number formatting."""

import re

import numpy as np
import pytest

from vfl.baseline import fit_baseline
from vfl.calibration import sigmoid
from vfl.metrics import evaluate, evaluate_held_out
from vfl.model import INTERCEPT, ModelShard
from vfl.report import SECTIONS, ReportData, build_report_data, render, write_report

LEDGER = {
    "job_id": "campaign-7",
    "party": "retailer",
    "role": "guest",
    "learns": ["the size of the intersection", "the final scores"],
    "never_learns": ["a host's features", "a host's weights"],
    "totals": {
        "bank": {"sent": {"messages": 42, "bytes": 1234567}, "received": {"messages": 40, "bytes": 98765432}},
        "arbiter": {"sent": {"messages": 7, "bytes": 512}, "received": {"messages": 7, "bytes": 2048}},
    },
    "messages": [{"tag": "x", "bytes": 1}],
    "notes": ["with a single host, the guest can derive the host's partial scores from the final scores"],
}


def shard(columns: int = 6, role: str = "guest") -> ModelShard:
    names = [INTERCEPT] + [f"col_{i}" for i in range(columns)]
    weights = [0.25] + [((-1) ** i) * (i + 1) / 10 for i in range(columns)]
    return ModelShard("campaign-7", "retailer", role, names, weights, {}, {})


def make_data(held: int, seed: int = 0, columns: int = 6) -> ReportData:
    """A run of ``held`` held-out rows (and four times as many training rows) with Taylor-like scores."""
    rng = np.random.default_rng(seed)
    n = 5 * held
    guest, host = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    truth = guest @ [0.7, -0.4, 0.2] + host @ [1.3, -0.9] - 1.0
    labels = (rng.random(n) < sigmoid(truth)).astype(float)
    z = 4 * truth  # the Taylor model's over-confident logits
    train, held_rows = np.arange(4 * held), np.arange(4 * held, n)
    cal, ev = evaluate_held_out(labels, z, train, held_rows, positive_label="bought")
    base = fit_baseline(np.hstack([np.ones((n, 1)), guest]), labels, train, held_rows)
    return build_report_data(
        ev,
        job_id="campaign-7",
        losses=[0.69, 0.52, 0.47, 0.455, 0.451],
        ledger=LEDGER,
        shard=shard(columns),
        baseline=base,
        calibrator=cal,
        run_date="2026-12-01T09:45:00+00:00",
        data_files=[{"name": "retailer.csv", "rows": n + 37}],
        options={"max_epochs": 5, "test_size": 0.2, "seed": 42, "calibration": "platt"},
        parties={"guest": "retailer", "hosts": ["bank"], "arbiter": "arbiter"},
        epochs=5,
        intersection_size=n,
    )


@pytest.fixture(scope="module")
def small() -> ReportData:
    return make_data(114)


@pytest.fixture(scope="module")
def page(small) -> str:
    return render(small)


def headings(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_every_section_is_present(page):
    found = headings(page)
    for title in SECTIONS:
        assert title in [h.replace("&#x27;", "'") for h in found], title
    assert "Small-sample warning" in found


def test_page_is_self_contained(page):
    assert "<script" not in page.lower()
    assert not re.search(r'src="(?!data:image/png;base64,)', page)
    assert page.count("data:image/png;base64,") == 7


def test_saved_data_renders_the_same_page(small, tmp_path, page):
    path = small.save(tmp_path / "report.json")
    loaded = ReportData.load(path)
    assert loaded == small
    assert render(loaded) == page
    first = write_report(tmp_path / "a.html", small).read_bytes()
    second = write_report(tmp_path / "b.html", ReportData.load(path)).read_bytes()
    assert first == second == page.encode()


def test_integers_are_shown_as_integers_and_bytes_with_separators(small, page):
    assert small.metrics["held_out_rows"] == 114 and isinstance(small.metrics["held_out_rows"], int)
    assert '<td>held-out rows</td><td class="num">114</td>' in page
    assert "114.0" not in page
    assert "1,234,567 bytes" in page and "98,765,432 bytes" in page
    assert '<td>bank</td><td>sent</td><td class="num">42</td>' in page
    assert "607 rows" in page  # data file row count (570 + 37)
    assert re.search(r"AUC \(area under the ROC curve\)</td><td class=\"num\">0\.\d{4}</td>", page)


def test_headline_states_interval_lift_class_and_threshold(small, page):
    headline = page.split('id="headline"')[1].split("</section>")[0]
    assert "95% interval" in headline and "DeLong" in headline
    assert "bought" in headline and "×" in headline
    assert "on the calibrated probability" in headline and ">0.50<" in headline
    assert "Platt scaling" in page


def test_baseline_block_shows_what_the_partners_add(small, page):
    block = page.split('id="guest-only-baseline--what-the-partners-add"')[1].split("</section>")[0]
    assert "guest only" in block and "federated" in block and "what the partners add" in block
    assert small.baseline["auc"] < small.metrics["auc"]
    assert re.search(r'<td>what the partners add</td><td class="num">\+0\.\d{4}</td>', block)


def test_only_the_guests_weights_top_twenty():
    data = make_data(114, columns=30)
    assert len(data.guest_weights) == 20 and data.guest_columns == 30
    assert data.guest_intercept == 0.25
    magnitudes = [abs(w["weight"]) for w in data.guest_weights]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert INTERCEPT not in [w["column"] for w in data.guest_weights]
    with pytest.raises(ValueError, match="only the guest's own weights"):
        build_report_data(
            evaluate(np.array([0, 1]), np.array([0.2, 0.8])),
            job_id="j",
            losses=[],
            ledger=LEDGER,
            shard=shard(role="host"),
        )
    assert "messages" not in data.ledger  # the message log stays in ledger.json


def test_small_sample_warning_only_for_small_held_out_sets(page):
    assert "Small-sample warning" in render(make_data(50))
    big = make_data(5000)
    assert big.warnings == []
    assert "Small-sample warning" not in render(big)


def test_old_keyword_call_still_writes_a_report(tmp_path, small):
    import pandas as pd

    path = write_report(
        tmp_path / "old.html",
        title="vfl job campaign-7: held-out evaluation at the guest",
        metrics=small.metrics,
        roc=pd.DataFrame(small.roc),
        lift=pd.DataFrame(small.lift),
        losses=small.losses,
        ledger=LEDGER,
        details={"job": "campaign-7", "epochs": 5, "intersection size": 570},
    )
    text = path.read_text()
    assert set(SECTIONS) - {"Guest-only baseline: what the partners add"} <= {
        h.replace("&#x27;", "'") for h in headings(text)
    }
    assert "not computed for this run" in text and "1,234,567 bytes" in text
    assert "Small-sample warning" in text  # derived from held_out_rows and positive_rate
