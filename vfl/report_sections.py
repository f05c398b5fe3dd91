"""The sections of the binary-lr report page (:func:`vfl.report.render`): style, headline, tables, ledger."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vfl.report_html import Num, _esc, _interval, _table, fmt, fmt_bytes

if TYPE_CHECKING:
    from vfl.report import ReportData

# Metrics in the order the page lists them, with what each one means; unknown keys follow, sorted.
METRIC_LABELS: dict[str, str] = {
    "held_out_rows": "held-out rows",
    "held_out_positives": "positives among them",
    "positive_rate": "positive rate",
    "auc": "AUC (area under the ROC curve)",
    "ks": "KS statistic",
    "top_decile_lift": "lift in the top decile",
    "threshold": "decision threshold",
    "accuracy": "accuracy at the threshold",
    "precision": "precision at the threshold",
    "recall": "recall at the threshold",
    "f1": "F1 at the threshold",
    "log_loss": "log loss, raw scores",
    "log_loss_calibrated": "log loss, calibrated probabilities",
    "brier": "Brier score, raw scores",
    "brier_calibrated": "Brier score, calibrated probabilities",
}


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 64rem; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .3rem; } h2 { font-size: 1.15rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
p.sub { color: #666; margin-top: 0; }
table.grid { border-collapse: collapse; margin: .5rem 0; } table.grid td, table.grid th { padding: .25rem .7rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
table.grid th { background: #f6f6f6; } table.grid td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; } .card { border: 1px solid #ddd; border-radius: 6px; padding: .6rem .9rem; min-width: 11rem; }
.card .big { font-size: 1.5rem; font-weight: 600; } .card .small { color: #555; font-size: .85rem; }
.warning { background: #fff4e0; border: 1px solid #e0a040; border-radius: 6px; padding: .2rem 1rem; margin-top: 1rem; }
.warning h2 { border: none; margin-top: .6rem; color: #8a5200; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 0 2rem; } .side { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: .5rem 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: .9rem; }
code { font-size: .85rem; background: #f4f4f4; padding: 0 .2rem; }
"""


def _section(title: str, body: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
    return f'<section id="{slug}"><h2>{_esc(title)}</h2>\n{body}\n</section>\n'


def _img(images: dict[str, str], key: str, alt: str, caption: str, missing: str) -> str:
    if key not in images:
        return f"<p>{_esc(missing)}</p>"
    return f'<figure><img alt="{_esc(alt)}" src="{images[key]}"><figcaption>{_esc(caption)}</figcaption></figure>'


def _card(label: str, big: str, small: str = "") -> str:
    return f'<div class="card"><div class="small">{_esc(label)}</div><div class="big">{_esc(big)}</div><div class="small">{_esc(small)}</div></div>'


def _headline(d: ReportData) -> str:
    m, iv = d.metrics, d.intervals
    default = d.thresholds.get("default", {})
    on = default.get("on", "score")
    threshold = m.get("threshold", default.get("value"))
    cards = [
        _card("AUC, held-out rows", fmt(m.get("auc"), 3), _interval(iv.get("auc"))),
        _card(
            "lift in the top decile", f"{fmt(m.get('top_decile_lift'), 2)}×", "positive rate there vs overall"
        ),
        _card(
            "positive class",
            d.positive_label,
            f"{fmt(m.get('held_out_positives'))} of {fmt(m.get('held_out_rows'))} held-out rows",
        ),
        _card("decision threshold", fmt(threshold, 2), f"on the {on}"),
        _card("accuracy at the threshold", fmt(m.get("accuracy"), 3), _interval(iv.get("accuracy"))),
    ]
    if d.baseline:
        cards.append(
            _card(
                "AUC, guest data only",
                fmt(d.baseline.get("auc"), 3),
                "plaintext logistic regression on the guest's columns",
            )
        )
    return f'<div class="cards">{"".join(cards)}</div>\n<p>Probabilities: {_esc(d.calibration)}.</p>'


def _metrics_table(d: ReportData) -> str:
    keys = [k for k in METRIC_LABELS if k in d.metrics] + sorted(
        k for k in d.metrics if k not in METRIC_LABELS
    )
    rows = [
        [METRIC_LABELS.get(k, k), d.metrics[k], _interval(d.intervals.get(k), prefix=False)] for k in keys
    ]
    return _table(["metric", "value", "95% interval"], rows) + (
        "<p>Ranking metrics (AUC, KS, lift, gains) use the model's scores; calibration does not change the order "
        "of rows. Log loss and Brier score are shown for the raw scores of the Taylor-approximated model and for "
        "the calibrated probabilities (fitted on the training rows only).</p>"
    )


def _threshold_table(d: ReportData) -> str:
    if not d.thresholds:
        return "<p>No threshold information in this run's data.</p>"
    rows = []
    for key, label in (("default", "default"), ("f1_optimal", "F1-optimal")):
        t = d.thresholds.get(key)
        if t:
            rows.append(
                [
                    label,
                    t.get("value"),
                    t.get("chosen", ""),
                    t.get("flagged_rows"),
                    t.get("accuracy"),
                    t.get("precision"),
                    t.get("recall"),
                    t.get("f1"),
                ]
            )
    on = d.thresholds.get("default", {}).get("on", "score")
    return (
        f"<p>A held-out row is predicted <b>{_esc(d.positive_label)}</b> when its {_esc(on)} is at or above the "
        "threshold. Accuracy, precision, recall and F1 in the metrics table use the default threshold.</p>"
        + _table(
            ["threshold", "value", "chosen by", "rows flagged", "accuracy", "precision", "recall", "F1"],
            rows,
            1,
        )
    )


def _lift_table(d: ReportData) -> str:
    if not d.lift:
        return ""
    cols = [
        ("decile", "decile"),
        ("rows", "rows"),
        ("positives", "positives"),
        ("rate", "positive rate"),
        ("lift", "lift"),
        ("cumulative_gain", "cumulative gain"),
        ("min_score", "lowest score in decile"),
    ]
    return _table([c[1] for c in cols], [[r.get(k) for k, _ in cols] for r in d.lift], 0)


def _baseline(d: ReportData) -> str:
    b = d.baseline
    if not b:
        return "<p>The guest-only baseline was not computed for this run.</p>"
    m = d.metrics
    fed_iv = d.intervals.get("auc", {})
    rows = [
        [
            "guest only (plaintext, guest's columns)",
            b.get("auc"),
            _interval(
                {"low": b.get("auc_low"), "high": b.get("auc_high"), "method": b.get("auc_method", "DeLong")},
                prefix=False,
            ),
            b.get("top_decile_lift"),
        ],
        [
            "federated (guest and partners)",
            m.get("auc"),
            _interval(fed_iv, prefix=False),
            m.get("top_decile_lift"),
        ],
    ]
    delta_auc = delta_lift = None
    if isinstance(m.get("auc"), float) and isinstance(b.get("auc"), float):
        delta_auc = m["auc"] - b["auc"]
    if isinstance(m.get("top_decile_lift"), float) and isinstance(b.get("top_decile_lift"), float):
        delta_lift = m["top_decile_lift"] - b["top_decile_lift"]
    rows.append(
        [
            "what the partners add",
            Num(f"{delta_auc:+.4f}" if delta_auc is not None else "n/a"),
            "",
            Num(f"{delta_lift:+.4f}" if delta_lift is not None else "n/a"),
        ]
    )
    return (
        f"<p>The guest trained a plaintext logistic regression on its own {fmt(len(b.get('columns') or []))} "
        f"standardized columns ({fmt(b.get('training_rows'))} training rows) and scored the same "
        f"{fmt(b.get('held_out_rows'))} held-out rows. The difference is what the partners' data adds.</p>"
        + _table(["model", "AUC", "95% interval", "top-decile lift"], rows)
    )


def _weights(d: ReportData, images: dict[str, str]) -> str:
    if not d.guest_weights:
        return "<p>No guest weights in this run's data.</p>"
    shown = len(d.guest_weights)
    caption = (
        f"The guest's {shown} largest weights by absolute value"
        + (f" (of {d.guest_columns:,} columns)" if d.guest_columns > shown else "")
        + (f"; intercept {d.guest_intercept:+.4f}" if d.guest_intercept is not None else "")
        + ". Partners' weights stay with the partners and are not shown."
    )
    return _img(images, "weights", "guest feature weights", caption, "")


def _provenance(d: ReportData) -> str:
    p = d.provenance
    parties = p.get("parties") or {}
    hosts = parties.get("hosts")
    rows = [
        ["run date", p.get("run_date") or "n/a"],
        ["job id", p.get("job_id") or d.job_id or "n/a"],
        ["guest", parties.get("guest") or "n/a"],
        ["hosts", ", ".join(hosts) if isinstance(hosts, list) else (hosts or "n/a")],
        ["arbiter", parties.get("arbiter") or "n/a"],
        ["aligned rows (intersection)", p.get("intersection_size")],
        ["epochs", p.get("epochs")],
        ["options digest", (p.get("options_digest") or "n/a")],
    ]
    for f in p.get("data_files") or []:
        rows.append([f"data file {f.get('name', '')}", Num(f"{fmt(f.get('rows'))} rows")])
    html_rows = _table(["item", "value"], rows, numeric_from=2)
    options = p.get("options") or {}
    extra = p.get("details") or {}
    more = ""
    if options:
        more += "<p>Options:</p>" + _table(
            ["option", "value"], [[k, _option(options[k])] for k in sorted(options)], numeric_from=2
        )
    if extra:
        more += _table(["setting", "value"], [[k, _option(extra[k])] for k in sorted(extra)], numeric_from=2)
    return html_rows + more


def _option(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return repr(value)  # an option as it was set (0.2, not 0.2000)
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else fmt(value)


def _ledger(d: ReportData) -> str:
    led = d.ledger or {}
    totals = led.get("totals") or {}
    rows = []
    for peer in sorted(totals):
        for direction in sorted(totals[peer]):
            v = totals[peer][direction]
            rows.append([peer, direction, v.get("messages"), Num(fmt_bytes(v.get("bytes")))])
    sent = sum((totals[p].get("sent") or {}).get("bytes", 0) for p in totals)
    received = sum((totals[p].get("received") or {}).get("bytes", 0) for p in totals)
    notes = "".join(f"<p>{_esc(n)}</p>" for n in led.get("notes") or [])
    return (
        f"<p>Party <b>{_esc(led.get('party', ''))}</b> ({_esc(led.get('role', ''))}).</p>"
        f"<p><b>May learn:</b> {_esc('; '.join(led.get('learns') or []))}.</p>"
        f"<p><b>Never learns:</b> {_esc('; '.join(led.get('never_learns') or []))}.</p>"
        + (_table(["peer", "direction", "messages", "bytes"], rows) if rows else "<p>No messages.</p>")
        + (
            f"<p>In total {_esc(fmt_bytes(sent))} sent and {_esc(fmt_bytes(received))} received.</p>"
            if rows
            else ""
        )
        + notes
    )
