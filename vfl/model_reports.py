"""The guest's HTML reports for the model kinds beyond binary-lr, and for feature screening.

Each is one self-contained page (plots inlined as PNG, no scripts), like ``vfl/report.py``'s:

* ``kind_report_html`` -- linear / poisson regression (held-out metrics, training loss, predicted
  against actual on held-out rows) and multi-class (metrics, per-class AUC, the confusion matrix);
* ``screen_report_html`` -- information value per column, strongest first (the IV ranking chart),
  and the WOE table of every column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vfl.ledger import Ledger
from vfl.report_html import _esc, _table, fmt
from vfl.report_plots import _figure, _png, pyplot

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table.grid{border-collapse:collapse;margin:.5em 0}table.grid td,table.grid th{border:1px solid #ddd;
padding:.25em .6em}td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.note{color:#666;font-size:.9em}
"""


def _page(title: str, sub: str, sections: list[str]) -> str:
    body = "\n".join(s for s in sections if s)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{_esc(title)}</h1><p class='note'>{_esc(sub)}</p>\n"
        f"{body}\n</body></html>\n"
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_esc(title)}</h2>{body}</section>"


def _loss_plot(losses: list[float]) -> str:
    if not losses:
        return "<p>No losses recorded.</p>"
    plt = pyplot()
    fig, ax = _figure(plt, (5.0, 3.0))
    ax.plot(range(1, len(losses) + 1), losses, color="#1f77b4")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    src = _png(fig)
    plt.close(fig)
    return f'<img src="{src}" alt="training loss per epoch">'


def _ledger_section(ledger: Ledger | None) -> str:
    if ledger is None:
        return ""
    learns = "".join(f"<li>{_esc(x)}</li>" for x in ledger.learns)
    never = "".join(f"<li>{_esc(x)}</li>" for x in ledger.never_learns)
    return _section(
        "What this party learned (leakage ledger)",
        f"<p>Learns:</p><ul>{learns}</ul><p>Never:</p><ul>{never}</ul>",
    )


def kind_report_html(
    job_id: str,
    model: str,
    metrics: dict[str, Any],
    losses: list[float],
    scores: pd.DataFrame,
    ledger: Ledger | None = None,
) -> str:
    """The report of a linear, poisson or multi-class training job."""
    scalar = [[k, v] for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    sections = [_section("Held-out metrics", _table(["metric", "value"], scalar))]
    if "train" in metrics:
        train = [[k, v] for k, v in metrics["train"].items()]
        sections.append(_section("Training-row metrics", _table(["metric", "value"], train)))
    if "confusion_matrix" in metrics:
        cm = metrics["confusion_matrix"]
        header = ["true \\ predicted", *[str(c) for c in range(len(cm))]]
        rows = [[str(i), *row] for i, row in enumerate(cm)]
        sections.append(_section("Confusion matrix (held-out rows)", _table(header, rows)))
        aucs = [[str(i), a] for i, a in enumerate(metrics.get("auc_ovr", []))]
        sections.append(_section("One-vs-rest AUC per class", _table(["class", "AUC"], aucs)))
    if "target" in scores and model in ("linear", "poisson"):
        held = scores[scores["held_out"]]
        plt = pyplot()
        fig, ax = _figure(plt, (4.5, 4.0))
        ax.scatter(held["target"], held["score"], s=8, alpha=0.6, color="#1f77b4")
        lo = float(min(held["target"].min(), held["score"].min())) if len(held) else 0.0
        hi = float(max(held["target"].max(), held["score"].max())) if len(held) else 1.0
        ax.plot([lo, hi], [lo, hi], color="#999", lw=1)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
        src = _png(fig)
        plt.close(fig)
        sections.append(
            _section(
                "Predicted against actual (held-out rows)", f'<img src="{src}" alt="predicted vs actual">'
            )
        )
    sections.append(_section("Training loss", _loss_plot(losses)))
    sections.append(_ledger_section(ledger))
    return _page(f"vfl {model} model", f"job {job_id}", sections)


def iv_chart(iv: pd.DataFrame) -> str:
    """A horizontal bar chart of IV per column, strongest on top, coloured by owner."""
    plt = pyplot()
    shown = iv.head(40)
    fig, ax = _figure(plt, (6.0, max(2.0, 0.28 * len(shown) + 0.8)))
    colors = ["#1f77b4" if o == "guest" else "#ff7f0e" for o in shown.get("owner", ["guest"] * len(shown))]
    labels = [
        f"{o}: {c}" for o, c in zip(shown.get("owner", [""] * len(shown)), shown["column"], strict=True)
    ]
    ax.barh(np.arange(len(shown))[::-1], shown["iv"].to_numpy(), color=colors)
    ax.set_yticks(np.arange(len(shown))[::-1], labels, fontsize=8)
    for x in (0.02, 0.1, 0.3, 0.5):
        ax.axvline(x, color="#bbb", lw=0.8, ls="--")
    ax.set_xlabel("information value")
    src = _png(fig)
    plt.close(fig)
    return f'<img src="{src}" alt="information value per column">'


def screen_report_html(job_id: str, iv: pd.DataFrame, woe: pd.DataFrame, ledger: Ledger | None = None) -> str:
    """The report of a screening job: the IV ranking chart, the IV table and every column's WOE table."""
    rows = [[r.owner, r.column, r.iv, r.strength, int(r.bins)] for r in iv.itertuples()]
    sections = [
        _section(
            "Information value ranking",
            iv_chart(iv) + "<p class='note'>Dashed lines: 0.02 weak, 0.1 medium, 0.3 strong, 0.5 suspicious "
            "(check for leakage). Blue: the guest's columns; orange: the hosts'.</p>",
        ),
        _section(
            "Information value", _table(["owner", "column", "IV", "strength", "bins"], rows, numeric_from=2)
        ),
    ]
    parts = []
    for (owner, column), table in woe.groupby(["owner", "column"], sort=False):
        body = [
            [r.bin, int(r.rows), int(r.events), int(r.non_events), r.woe, r.iv] for r in table.itertuples()
        ]
        parts.append(
            f"<h3>{_esc(owner)}: {_esc(column)}</h3>"
            + _table(["bin", "rows", "events", "non-events", "WOE", "IV"], body)
        )
    sections.append(_section("WOE per bin", "".join(parts)))
    sections.append(_ledger_section(ledger))
    return _page("vfl feature screening", f"job {job_id}", sections)


__all__ = ["fmt", "iv_chart", "kind_report_html", "screen_report_html"]
