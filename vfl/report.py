"""The guest's HTML report: metrics, ROC, loss curve, lift chart and the leakage ledger, in one file.

Plots are PNGs embedded as data URIs so the report can be mailed or archived as a single file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import pandas as pd

from vfl.io import atomic_write_text


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(roc: pd.DataFrame, losses: list[float], lift: pd.DataFrame) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(roc["fpr"], roc["tpr"], color="#1f5aa6", lw=2, label="model")
    ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (held-out rows)")
    ax.legend(loc="lower right")
    images["roc"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(range(1, len(losses) + 1), losses, marker="o", color="#b0413e")
    ax.set(xlabel="epoch", ylabel="Taylor loss (training rows)", title="Training loss")
    images["loss"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.bar(lift["decile"], lift["lift"], color="#3c8d5a")
    ax.axhline(1.0, color="#999", ls="--", lw=1)
    ax.set(xlabel="decile (highest scores first)", ylabel="lift", title="Lift by decile")
    images["lift"] = _png(fig)
    plt.close(fig)
    return images


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, classes="grid")


def write_report(
    path: str | Path,
    *,
    title: str,
    metrics: dict[str, float],
    roc: pd.DataFrame,
    lift: pd.DataFrame,
    losses: list[float],
    ledger: dict[str, Any],
    details: dict[str, Any] | None = None,
) -> Path:
    """Write the report atomically to ``path`` and return it."""
    images = _plots(roc, losses, lift)
    metric_rows = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
    totals = [
        {"peer": peer, "direction": direction, "messages": v["messages"], "bytes": v["bytes"]}
        for peer, slots in sorted(ledger.get("totals", {}).items())
        for direction, v in sorted(slots.items())
    ]
    detail_rows = pd.DataFrame(
        {"setting": list((details or {}).keys()), "value": [str(v) for v in (details or {}).values()]}
    )
    esc = html.escape
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }}
table.grid {{ border-collapse: collapse; }} table.grid td, table.grid th {{ padding: .25rem .7rem; border-bottom: 1px solid #eee; text-align: right; }}
.plots img {{ width: 32%; min-width: 18rem; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Held-out metrics</h2>
{_table(metric_rows)}
<div class="plots"><img alt="ROC curve" src="{images["roc"]}"><img alt="loss curve" src="{images["loss"]}"><img alt="lift chart" src="{images["lift"]}"></div>
<h2>Lift and gains by decile</h2>
{_table(lift)}
<h2>Job</h2>
{_table(detail_rows)}
<h2>Leakage ledger of this party ({esc(str(ledger.get("party", "")))}, {esc(str(ledger.get("role", "")))})</h2>
<p><b>May learn:</b> {esc("; ".join(ledger.get("learns", [])))}.</p>
<p><b>Never learns:</b> {esc("; ".join(ledger.get("never_learns", [])))}.</p>
{_table(pd.DataFrame(totals)) if totals else "<p>No messages.</p>"}
{"".join(f"<p>{esc(n)}</p>" for n in ledger.get("notes", []))}
</body></html>
"""
    return atomic_write_text(path, body)
