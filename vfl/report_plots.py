"""The plots of the report pages: PNG data URIs from matplotlib figures (Agg backend, no metadata).

``_plots`` draws every figure of the binary-lr report (:mod:`vfl.report`); ``_png``, ``_figure`` and ``pyplot``
are shared by the other report pages.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from vfl.report_html import fmt

if TYPE_CHECKING:
    from vfl.report import ReportData


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    # no metadata (software version, dates): the same data gives the same bytes
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(plt: Any, size: tuple[float, float] = (5.0, 3.8)) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=size)
    ax.grid(True, color="#eee", lw=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _plots(data: ReportData) -> dict[str, str]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, str] = {}
    with plt.rc_context({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False}):
        if data.roc.get("fpr"):
            fig, ax = _figure(plt)
            auc = data.metrics.get("auc")
            ax.plot(
                data.roc["fpr"], data.roc["tpr"], color="#1f5aa6", lw=2, label=f"model (AUC {fmt(auc, 3)})"
            )
            ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="random")
            ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
            ax.legend(loc="lower right")
            images["roc"] = _png(fig)
            plt.close(fig)

        if data.gains.get("fraction_targeted"):
            fig, ax = _figure(plt)
            x, y = data.gains["fraction_targeted"], data.gains["fraction_captured"]
            ax.plot(x, y, color="#1f5aa6", lw=2, label="model")
            rate = data.metrics.get("positive_rate")
            if isinstance(rate, float) and rate > 0:
                ax.plot([0, rate, 1], [0, 1, 1], color="#3c8d5a", ls=":", lw=1.2, label="perfect ranking")
            ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="random")
            ax.set(
                xlabel="share of rows targeted (highest scores first)", ylabel="share of positives captured"
            )
            ax.set(xlim=(0, 1), ylim=(0, 1.01))
            ax.legend(loc="lower right")
            images["gains"] = _png(fig)
            plt.close(fig)

        if data.lift:
            fig, ax = _figure(plt)
            ax.bar([r["decile"] for r in data.lift], [r["lift"] or 0.0 for r in data.lift], color="#3c8d5a")
            ax.axhline(1.0, color="#999", ls="--", lw=1)
            ax.set(
                xlabel="decile (highest scores first)", ylabel="lift", xticks=[r["decile"] for r in data.lift]
            )
            images["lift"] = _png(fig)
            plt.close(fig)

        if data.calibration_curve:
            fig, ax = _figure(plt)
            ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="perfectly calibrated")
            styles = {"raw": ("#b0413e", "raw scores"), "calibrated": ("#1f5aa6", "calibrated")}
            for key in ("raw", "calibrated"):
                rows = data.calibration_curve.get(key) or []
                if rows:
                    colour, label = styles[key]
                    ax.plot(
                        [r["mean_predicted"] for r in rows],
                        [r["observed_rate"] for r in rows],
                        marker="o",
                        color=colour,
                        label=label,
                    )
            ax.set(
                xlabel="mean predicted probability (bin)",
                ylabel="observed positive rate",
                xlim=(0, 1),
                ylim=(0, 1),
            )
            ax.legend(loc="upper left")
            images["calibration"] = _png(fig)
            plt.close(fig)

        dist = data.score_distribution
        if dist.get("edges"):
            fig, ax = _figure(plt)
            edges = dist["edges"]
            for key, colour, label in (
                ("negative", "#b0413e", "negative rows"),
                ("positive", "#1f5aa6", "positive rows"),
            ):
                counts = dist.get(key) or []
                total = sum(counts)
                shares = [c / total for c in counts] if total else counts
                ax.stairs(shares, edges, color=colour, lw=2, label=f"{label} ({total:,})")
            ax.set(xlabel=str(dist.get("scores", "score")), ylabel="share of the class's rows", xlim=(0, 1))
            ax.legend(loc="best")
            images["distribution"] = _png(fig)
            plt.close(fig)

        if data.losses:
            fig, ax = _figure(plt)
            ax.plot(range(1, len(data.losses) + 1), data.losses, marker="o", color="#b0413e")
            ax.set(xlabel="epoch", ylabel="Taylor loss (training rows)")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            images["loss"] = _png(fig)
            plt.close(fig)

        if data.guest_weights:
            rows = list(reversed(data.guest_weights))
            fig, ax = _figure(plt, (6.0, 0.6 + 0.28 * len(rows)))
            ax.barh(
                [r["column"] for r in rows],
                [r["weight"] for r in rows],
                color=["#1f5aa6" if r["weight"] >= 0 else "#b0413e" for r in rows],
            )
            ax.axvline(0, color="#555", lw=0.8)
            ax.set(xlabel="weight (standardized column)")
            images["weights"] = _png(fig)
            plt.close(fig)
    return images
