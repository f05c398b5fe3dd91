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
from vfl.report_sections import (
    _STYLE,
    _baseline,
    _headline,
    _img,
    _ledger,
    _lift_table,
    _metrics_table,
    _provenance,
    _section,
    _threshold_table,
    _weights,
)
from vfl.report_sections import METRIC_LABELS as METRIC_LABELS
from vfl.report_sections import _card as _card
from vfl.report_sections import _option as _option

REPORT_FORMAT = "vfl-report/1"
TOP_WEIGHTS = 20
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
