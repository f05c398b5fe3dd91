"""The guest's HTML report of an ``audience`` job: overlap chart, one heat map per host, the released numbers.

One self-contained page (plots are PNGs embedded as data URIs, no JavaScript), written atomically,
like :mod:`vfl.report`. It shows only what was released: withheld cells (noised count below ``k``) are
drawn as hatched grey cells marked "< k" and have no numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.io import atomic_write_text
from vfl.report_html import _esc
from vfl.report_plots import _png, pyplot


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return _esc(value)


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def segment_columns(frame: pd.DataFrame) -> list[str]:
    return [
        c for c in frame.columns if c not in ("count", "suppressed") and not c.startswith(("sum_", "mean_"))
    ]


def heat_matrix(
    frame: pd.DataFrame, guest_columns: list[str]
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Rows = guest cells, columns = host cells; counts (NaN where withheld) and the withheld mask."""
    host_columns = [c for c in segment_columns(frame) if c not in guest_columns]

    def label(rec: dict, cols: list[str]) -> str:
        return " / ".join(str(rec[c]) for c in cols) or "all"

    recs = frame.to_dict(orient="records")
    rows = list(dict.fromkeys(label(r, guest_columns) for r in recs))
    cols = list(dict.fromkeys(label(r, host_columns) for r in recs))
    counts = np.full((len(rows), len(cols)), np.nan)
    withheld = np.zeros((len(rows), len(cols)), dtype=bool)
    for r in recs:
        i, j = rows.index(label(r, guest_columns)), cols.index(label(r, host_columns))
        withheld[i, j] = bool(r["suppressed"])
        if not withheld[i, j] and r["count"] is not None:
            counts[i, j] = float(r["count"])
    return rows, cols, counts, withheld


def _plots(run: Any, guest_columns: list[str], k: int) -> dict[str, str]:
    plt = pyplot()
    images: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(6.0, 0.6 + 0.5 * len(run.overlap)))
    ax.barh(list(run.overlap["between"]), list(run.overlap["size"]), color="#3b6ea8")
    for y, v in enumerate(run.overlap["size"]):
        ax.text(v, y, f" {int(v):,}", va="center")
    ax.set_xlabel("shared customers")
    ax.invert_yaxis()
    ax.set_title("Audience overlap")
    images["overlap"] = _png(fig)
    plt.close(fig)
    for host, frame in run.crosstabs.items():
        rows, cols, counts, withheld = heat_matrix(frame, guest_columns)
        fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(cols), 1.0 + 0.4 * len(rows)))
        shown = np.ma.masked_invalid(counts)
        im = ax.imshow(shown, cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                if withheld[i, j]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#dddddd", hatch="///",
                                               edgecolor="#999999"))  # fmt: skip
                    ax.text(j, i, f"<{k}", ha="center", va="center", fontsize=7, color="#555555")
                else:
                    ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(
            f"Shared customers by segment: {run.party} x {host} (hatched: withheld, noised count < {k})"
        )
        fig.colorbar(im, ax=ax, label="noised count")
        images[host] = _png(fig)
        plt.close(fig)
    return images


def render(run: Any, *, options: dict[str, Any], job_id: str) -> str:
    k = int(options.get("k", 20))
    guest_columns = list(options.get("segments", {}).get(run.party, []))
    images = _plots(run, guest_columns, k)
    parts = [
        f"<h1>Joint audience: job {_esc(job_id)}</h1>",
        "<p>Every number below the overlap carries discrete Laplace noise from both parties "
        f"(epsilon {options.get('epsilon')} per partner for this job); cells whose noised count is below "
        f"k = {k} are withheld, counts and sums alike.</p>",
    ]
    if run.noise_disabled_for_tests:
        parts.append(
            "<p><strong>Noise was disabled by a test hook: these numbers are exact, not private.</strong></p>"
        )
    parts += ["<h2>Overlap</h2>", f'<img src="{images["overlap"]}" alt="overlap chart">', _table(run.overlap)]
    if run.overlap_by_segment is not None:
        parts += ["<h2>Overlap by guest segment</h2>",
                  "<p>From the guest's own PSI rows (never sent to a host); below k withheld.</p>",
                  _table(run.overlap_by_segment)]  # fmt: skip
    for host, frame in run.crosstabs.items():
        parts += [f"<h2>Cross-tab with {_esc(host)}</h2>", f'<img src="{images[host]}" alt="heat map {_esc(host)}">',
                  _table(frame)]  # fmt: skip
    ledger = pd.DataFrame(run.released)
    if len(ledger):
        summary = (
            ledger.assign(seen_by=ledger["seen_by"].map(", ".join))
            .groupby(["table", "kind", "epsilon", "seen_by"], dropna=False)
            .size()
            .reset_index(name="numbers")
        )
        parts += ["<h2>Released numbers (leakage ledger)</h2>", _table(summary)]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vfl audience {_esc(job_id)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_audience_report(path: str | Path, run: Any, *, options: dict[str, Any], job_id: str) -> Path:
    return atomic_write_text(path, render(run, options=options, job_id=job_id))


__all__ = ["heat_matrix", "render", "write_audience_report"]
