"""The guest's HTML report of a ``segment`` job: segment sizes, outcome rate by segment, profiles.

Self-contained (figures as PNG data URIs, matplotlib with the Agg backend); only released numbers
appear: noised sizes, noised outcome rates with their Wilson interval, the guest's own-column means
and the hosts' noised means where their policy shared them.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from vfl.io import atomic_write_text
from vfl.report_plots import _png, pyplot


def segment_figures(profiles: pd.DataFrame) -> dict[str, str]:
    """PNG data URIs: ``sizes``, ``rate`` (when the profiles have an outcome), ``profiles`` (heat map)."""
    plt = pyplot()
    out: dict[str, str] = {}
    seg = [str(s) for s in profiles.index]
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.bar(seg, profiles["size"].to_numpy(), color="#4c72b0")
    ax.set_xlabel("segment")
    ax.set_ylabel("customers (noised)")
    ax.set_title("Segment sizes")
    out["sizes"] = _png(fig)
    plt.close(fig)
    if "rate" in profiles:
        rate = profiles["rate"].to_numpy()
        err = np.vstack([rate - profiles["rate_low"].to_numpy(), profiles["rate_high"].to_numpy() - rate])
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
        ax.bar(seg, rate, yerr=np.maximum(err, 0), capsize=4, color="#55a868")
        ax.set_xlabel("segment")
        ax.set_ylabel("outcome rate")
        ax.set_title("Outcome rate by segment (95% Wilson interval)")
        out["rate"] = _png(fig)
        plt.close(fig)
    means = profiles[[c for c in profiles.columns if ":" in str(c)]]
    if not means.empty:
        values = means.to_numpy(dtype=float)
        std = np.nanstd(values, axis=0)
        z = (values - np.nanmean(values, axis=0)) / np.where(std > 0, std, 1.0)
        fig, ax = plt.subplots(figsize=(min(12.0, 1.0 + 0.5 * values.shape[1]), 0.5 + 0.45 * len(seg)))
        im = ax.imshow(np.nan_to_num(z), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
        ax.set_yticks(range(len(seg)), seg)
        ax.set_xticks(range(values.shape[1]), [str(c) for c in means.columns], rotation=60, ha="right")
        ax.set_title("Segment profiles (column means, standardized across segments)")
        fig.colorbar(im, ax=ax, shrink=0.8)
        out["profiles"] = _png(fig)
        plt.close(fig)
    return out


def render_report(profiles: pd.DataFrame, *, job_id: str, party: str, outcome: str | None = None) -> str:
    figures = segment_figures(profiles)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["segment", *profiles.columns])
    rows = []
    for seg, rec in profiles.iterrows():
        cells = "".join(f"<td>{'' if pd.isna(v) else format(float(v), '.4g')}</td>" for v in rec.to_numpy())
        rows.append(f"<tr><td>{html.escape(str(seg))}</td>{cells}</tr>")
    captions = {
        "sizes": "Segment sizes (noised)",
        "rate": "Outcome rate by segment, with its interval (sampling and DP noise)",
        "profiles": "Segment profiles: column means, standardized across segments",
    }
    imgs = "".join(
        f'<figure><img src="{figures[k]}" alt="{k}"><figcaption>{captions[k]}</figcaption></figure>'
        for k in ("sizes", "rate", "profiles")
        if k in figures
    )
    note = (
        f"<p>Outcome column: <code>{html.escape(outcome)}</code>.</p>"
        if outcome
        else "<p>No outcome column.</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Joint segmentation {html.escape(job_id)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}figure{{display:inline-block;margin:1em}}</style>
</head><body>
<h1>Joint segmentation: job {html.escape(job_id)}</h1>
<p>Report of party <b>{html.escape(party)}</b>. {len(profiles)} segments. Sizes and outcome counts are
differentially private (noised); columns of other parties appear only as noised means, and only where
their policy allows.</p>{note}
{imgs}
<h2>Profiles</h2>
<table><tr>{head}</tr>{"".join(rows)}</table>
</body></html>
"""


def write_report(
    path: Path, profiles: pd.DataFrame, *, job_id: str, party: str, outcome: str | None = None
) -> Path:
    return atomic_write_text(path, render_report(profiles, job_id=job_id, party=party, outcome=outcome))
