"""The guest's HTML report, in two steps: the data it shows (``ReportData``, saved as ``report.json``), and the page.

1. :func:`build_report_data` gathers everything the page shows from a finished run: the held-out
   :class:`~vfl.metrics.Evaluation`, the training losses, the guest's own model shard (only the guest's weights
   are ever shown), the guest-only :class:`~vfl.baseline.Baseline`, provenance and the leakage ledger. The
   result is plain JSON-able data; ``ReportData.save``/``ReportData.load`` are an exact round trip.
2. :func:`render` turns a ``ReportData`` into one self-contained HTML page (plots are PNGs embedded as data
   URIs, no JavaScript), and :func:`write_report` writes it atomically. Rendering depends on nothing but the
   data, so ``vfl report`` regenerates a byte-identical page from a saved ``report.json``.

The old keyword form ``write_report(path, title=..., metrics=..., roc=..., lift=..., losses=..., ledger=...,
details=...)`` still works (sections whose data it lacks say so).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vfl.io import atomic_write_json, atomic_write_text
from vfl.metrics import jsonable
from vfl.model import INTERCEPT
from vfl.report_html import Num as Num
from vfl.report_html import _esc as _esc
from vfl.report_html import _interval as _interval
from vfl.report_html import _table as _table
from vfl.report_html import fmt as fmt
from vfl.report_html import fmt_bytes as fmt_bytes
from vfl.report_plots import _figure as _figure
from vfl.report_plots import _plots as _plots
from vfl.report_plots import _png as _png

REPORT_FORMAT = "vfl-report/1"
TOP_WEIGHTS = 20

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
SECTIONS = (
    "Headline",
    "Held-out metrics",
    "Decision threshold",
    "ROC curve",
    "Cumulative gains",
    "Lift by decile",
    "Calibration",
    "Score distribution by class",
    "Training loss",
    "Guest-only baseline: what the partners add",
    "Guest feature weights",
    "Provenance",
    "Leakage ledger",
)


@dataclass
class ReportData:
    """Everything the report page shows, as JSON-able values (ints stay ints; missing numbers are ``None``)."""

    title: str
    job_id: str = ""
    positive_label: str = "1"
    calibration: str = "none"  # how the probabilities were calibrated, in words
    metrics: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    roc: dict[str, list[float]] = field(default_factory=dict)  # fpr, tpr
    gains: dict[str, list[float]] = field(default_factory=dict)  # fraction_targeted, fraction_captured
    lift: list[dict[str, Any]] = field(default_factory=list)
    calibration_curve: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # raw / calibrated
    score_distribution: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    guest_weights: list[dict[str, Any]] = field(default_factory=list)  # column, weight; top by |weight|
    guest_intercept: float | None = None
    guest_columns: int = 0  # how many model columns the guest has (the chart shows at most TOP_WEIGHTS)
    baseline: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    format: str = REPORT_FORMAT

    def __post_init__(self) -> None:
        # normalise once, so data built in memory equals the same data loaded back from JSON
        for f in fields(self):
            setattr(self, f.name, jsonable(getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportData:
        if data.get("format") != REPORT_FORMAT:
            raise ValueError(
                f"not a vfl report data file (format {data.get('format')!r}, expected {REPORT_FORMAT})"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ReportData:
        return cls.from_dict(json.loads(Path(path).read_text()))


def options_digest(options: dict[str, Any]) -> str:
    """SHA-256 of the options as canonical JSON: two runs with the same digest used the same settings."""
    blob = json.dumps(jsonable(options), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def build_report_data(
    evaluation: Any,
    *,
    job_id: str,
    losses: list[float],
    ledger: Any,
    shard: Any = None,
    baseline: Any = None,
    calibrator: Any = None,
    title: str | None = None,
    run_date: str | None = None,
    data_files: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    parties: dict[str, Any] | None = None,
    epochs: int | None = None,
    intersection_size: int | None = None,
) -> ReportData:
    """The report data of a finished training run at the guest.

    ``evaluation`` is :func:`vfl.metrics.evaluate`'s result; ``shard`` the guest's own
    :class:`~vfl.model.ModelShard` (a host's shard is refused: the report never shows a partner's weights);
    ``baseline`` a :class:`~vfl.baseline.Baseline`; ``ledger`` the guest's :class:`~vfl.ledger.Ledger` (or its
    dict); ``data_files`` ``[{"name": ..., "rows": ...}]``; ``parties`` ``{"guest", "hosts", "arbiter"}``.
    """
    weights: list[dict[str, Any]] = []
    intercept = None
    n_columns = 0
    if shard is not None:
        if shard.role != "guest":
            raise ValueError(f"the report shows only the guest's own weights, not those of a {shard.role}")
        pairs = list(zip(shard.columns, shard.weights, strict=True))
        if pairs and pairs[0][0] == INTERCEPT:
            intercept = float(pairs[0][1])
            pairs = pairs[1:]
        n_columns = len(pairs)
        pairs.sort(key=lambda p: (-abs(float(p[1])), str(p[0])))
        weights = [{"column": str(c), "weight": float(w)} for c, w in pairs[:TOP_WEIGHTS]]
    ledger_dict = ledger if isinstance(ledger, dict) else asdict(ledger)
    provenance = {
        "run_date": run_date or datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "job_id": job_id,
        "parties": parties or {},
        "data_files": list(data_files or []),
        "options": options or {},
        "options_digest": options_digest(options or {}),
        "epochs": epochs,
        "intersection_size": intersection_size,
    }
    ev = evaluation.to_dict()
    method = getattr(evaluation, "calibration_method", "none")
    if calibrator is not None:
        described = calibrator.describe()
    else:
        described = "not calibrated (sigmoid of the joint logit)" if method == "none" else method
    return ReportData(
        title=title or f"vfl job {job_id}: held-out evaluation at the guest",
        job_id=job_id,
        positive_label=ev["positive_label"],
        calibration=described,
        metrics=ev["metrics"],
        intervals=ev["intervals"],
        thresholds=ev["thresholds"],
        roc=ev["roc"],
        gains=ev["gains"],
        lift=ev["lift"],
        calibration_curve=ev["calibration_curve"],
        score_distribution=ev["score_distribution"],
        losses=[float(v) for v in losses],
        guest_weights=weights,
        guest_intercept=intercept,
        guest_columns=n_columns,
        baseline=baseline.to_dict() if hasattr(baseline, "to_dict") else baseline,
        warnings=ev["warnings"],
        provenance=provenance,
        ledger={
            k: ledger_dict.get(k)
            for k in ("job_id", "party", "role", "learns", "never_learns", "totals", "notes")
        },
    )


# ---------------------------------------------------------------------------------------------------- page

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


def render(data: ReportData) -> str:
    """The report page of ``data``: one self-contained HTML document (same data, same bytes)."""
    d = data
    images = _plots(d)
    warning = ""
    if d.warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in d.warnings)
        warning = f'<div class="warning" id="small-sample-warning"><h2>Small-sample warning</h2><ul>{items}</ul></div>\n'
    p = d.provenance
    sub = f"job {d.job_id or p.get('job_id', '')} · run {p.get('run_date', 'n/a')}"
    dist = d.score_distribution
    sections = [
        _section("Headline", _headline(d)),
        warning,
        _section("Held-out metrics", _metrics_table(d)),
        _section("Decision threshold", _threshold_table(d)),
        '<div class="pair">',
        _section(
            "ROC curve",
            _img(
                images,
                "roc",
                "ROC curve",
                "True against false positive rate over all thresholds, held-out rows.",
                "No ROC data.",
            ),
        ),
        _section(
            "Cumulative gains",
            _img(
                images,
                "gains",
                "cumulative gains curve",
                "Share of all positives found when targeting the top share of rows by score; from (0, 0) to (1, 1).",
                "No gains curve in this run's data.",
            ),
        ),
        "</div>",
        _section(
            "Lift by decile",
            '<div class="side">'
            + _img(
                images,
                "lift",
                "lift chart",
                "Positive rate in each decile divided by the overall rate.",
                "No lift data.",
            )
            + _lift_table(d)
            + "</div>",
        ),
        '<div class="pair">',
        _section(
            "Calibration",
            _img(
                images,
                "calibration",
                "calibration curve",
                "Observed positive rate against mean predicted probability per bin of width 0.1; on the diagonal the scores are probabilities.",
                "No calibration curve in this run's data.",
            ),
        ),
        _section(
            "Score distribution by class",
            _img(
                images,
                "distribution",
                "score distribution by class",
                f"Distribution of the {dist.get('scores', 'score')} among positive and negative held-out rows.",
                "No score distribution in this run's data.",
            ),
        ),
        "</div>",
        _section(
            "Training loss",
            _img(
                images,
                "loss",
                "loss curve",
                "Taylor-approximated logistic loss on the training rows, per epoch.",
                "No losses recorded.",
            ),
        ),
        _section("Guest-only baseline: what the partners add", _baseline(d)),
        _section("Guest feature weights", _weights(d, images)),
        _section("Provenance", _provenance(d)),
        _section("Leakage ledger", _ledger(d)),
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(d.title)}</title>\n<style>{_STYLE}</style></head><body>\n"
        f'<h1>{_esc(d.title)}</h1>\n<p class="sub">{_esc(sub)}</p>\n' + "".join(sections) + "</body></html>\n"
    )


def write_report(
    path: str | Path,
    data: ReportData | None = None,
    *,
    title: str | None = None,
    metrics: dict[str, Any] | None = None,
    roc: Any = None,
    lift: Any = None,
    losses: list[float] | None = None,
    ledger: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> Path:
    """Write the report page of ``data`` atomically to ``path`` and return the path.

    Without ``data``, the old keyword form builds it from ``metrics``, ``roc``, ``lift``, ``losses``, ``ledger``
    and ``details`` (what ``metrics.json`` and ``ledger.json`` of older runs hold).
    """
    if data is None:
        data = legacy_report_data(
            title=title or "vfl report",
            metrics=metrics or {},
            roc=roc,
            lift=lift,
            losses=losses or [],
            ledger=ledger or {},
            details=details,
        )
    return atomic_write_text(path, render(data))


def legacy_report_data(
    *,
    title: str,
    metrics: dict[str, Any],
    roc: Any,
    lift: Any,
    losses: list[float],
    ledger: dict[str, Any],
    details: dict[str, Any] | None,
) -> ReportData:
    """Report data from the outputs of runs made before ``report.json`` existed."""
    import pandas as pd

    roc_dict = pd.DataFrame(roc).to_dict(orient="list") if roc is not None else {}
    lift_rows = pd.DataFrame(lift).to_dict(orient="records") if lift is not None else []
    from vfl.metrics import small_sample_warnings

    details = dict(details or {})
    job = str(details.get("job", ""))
    rows, rate = metrics.get("held_out_rows"), metrics.get("positive_rate")
    warnings = []
    if isinstance(rows, int) and isinstance(rate, float) and math.isfinite(rate):
        warnings = small_sample_warnings(rows, int(metrics.get("held_out_positives", round(rate * rows))))
    return ReportData(
        title=title,
        job_id=job,
        metrics=dict(metrics),
        roc=roc_dict,
        lift=lift_rows,
        losses=list(losses),
        warnings=warnings,
        provenance={
            "job_id": job,
            "details": details,
            "epochs": details.get("epochs"),
            "intersection_size": details.get("intersection size"),
        },
        ledger={
            k: ledger.get(k) for k in ("job_id", "party", "role", "learns", "never_learns", "totals", "notes")
        },
    )
