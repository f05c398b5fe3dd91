"""Feature screening (job kind ``screen``, DESIGN.md §17): the guest ranks every column by information value.

The guest aligns its ids with every host (PSI), screens its own numeric columns locally, and runs the
screening protocol (``protocols/screen.py``) with every host: it learns per-bin counts, WOE and IV of
each host column, never a host value. Outputs at the guest: ``iv.csv`` (the ranking), ``woe.csv``
(every bin), ``screen.json`` and ``report.html`` (the IV ranking chart); at a host: its ledger, and
``iv.csv`` of its own columns when the guest shares it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.crypto import generate_keypair
from vfl.data import binary_labels, positive_class, require_columns
from vfl.errors import ConfigError, DataError
from vfl.io import atomic_write_json, atomic_write_text
from vfl.ledger import Ledger
from vfl.model_reports import screen_report_html
from vfl.options import ScreenOptions
from vfl.parties.alignment import aligned_rows, checked_view, run_psi
from vfl.parties.common import Job, feature_columns, ledger_for, write_outputs
from vfl.parties.context import Outcome, RoleContext
from vfl.protocols import screen as protocol
from vfl.protocols.session import Session

log = logging.getLogger(__name__)


@dataclass
class ScreenOutcome:
    iv: pd.DataFrame | None
    woe: pd.DataFrame | None
    intersection_size: int
    ledger: Ledger
    outputs: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"intersection": self.intersection_size}
        if self.iv is not None and len(self.iv):
            out["columns"] = len(self.iv)
            top = self.iv.iloc[0]
            owner = f"{top['owner']}:" if "owner" in self.iv else ""
            out["strongest"] = f"{owner}{top['column']} (IV {top['iv']:.3f})"
        return out


def _options(job: Job) -> ScreenOptions:
    return job.screen or ScreenOptions()


def _plan(job: Job) -> protocol.ScreenPlan:
    return protocol.ScreenPlan(job.guest, job.hosts, _options(job))


def _align(session: Session, job: Job, data: pd.DataFrame, id_column: str):
    o = _options(job)
    if job.psi.reveal != "all":
        raise ConfigError('a screening job needs [psi] reveal = "all": the hosts bin their aligned rows')
    result = run_psi(session, job, data[id_column], job.psi, column=id_column)
    session.guard(result.require_nonempty)

    def enough() -> None:
        if result.size < o.min_intersection:
            raise DataError(
                f"the parties share {result.size} ids, fewer than the screening job's minimum of "
                f"{o.min_intersection} ([screen] min_intersection)"
            )

    session.guard(enough)
    return result


def guest(ctx: RoleContext) -> Outcome:
    """The guest's role of a screening job: its own columns, then every host's through the protocol."""
    session, job, data, id_column, label = ctx.session, ctx.job, ctx.data, ctx.id_column, ctx.label
    columns, positive, output_dir = ctx.columns, ctx.positive, ctx.output_dir
    assert data is not None and label is not None
    o = _options(job)

    def check() -> tuple[list[str], str]:
        view = checked_view(data, ctx.streamed, ())  # the column checks ran when the file was loaded
        require_columns(view, [id_column, label], what="the guest's data")
        features = feature_columns(view, id_column, label, columns) if o.guest_columns else []
        binary_labels(data[label], column=label, positive=positive)
        return features, positive_class(data[label], column=label, positive=positive)

    features, positive_label = session.guard(check)
    session.guard(lambda: session.agree(job.settings()))
    result = _align(session, job, data, id_column)
    aligned = aligned_rows(result, data, ctx.streamed, features)
    labels = session.guard(lambda: binary_labels(aligned[label], column=label, positive=positive_label))
    session.guard(lambda: _two_classes(labels))
    numeric, skipped = protocol.numeric_columns(aligned[features])

    def own() -> list[protocol.ColumnScreen]:
        return [
            protocol.screen_own_column(aligned[c].to_numpy(dtype=float), labels, c, session.party, o)
            for c in numeric
        ]

    results = session.guard(own)
    keys = ctx.keypair or generate_keypair(o.key_bits)
    results += session.guard(
        lambda: protocol.run_guest(session, _plan(job), labels, keys, workers=ctx.workers)
    )
    if o.share_iv:
        protocol.share_iv(session, _plan(job), results)
    session.barrier("screen")
    iv, woe = protocol.iv_ranking(results), protocol.woe_tables(results)
    outcome = _finish(session, result, skipped, [], iv, woe, output_dir)
    ledger = outcome.ledger
    if output_dir is not None:
        outcome.outputs["iv"] = atomic_write_text(output_dir / "iv.csv", iv.to_csv(index=False))
        outcome.outputs["woe"] = atomic_write_text(output_dir / "woe.csv", woe.to_csv(index=False))
        outcome.outputs["screen"] = atomic_write_json(
            output_dir / "screen.json",
            {
                "positive_class": positive_label,
                "intersection_size": result.size,
                "options": o.to_dict(),
                "iv": iv.to_dict(orient="records"),
                "skipped_columns": skipped,
            },
        )
        outcome.outputs["report"] = atomic_write_text(
            output_dir / "report.html", screen_report_html(job.id, iv, woe, ledger)
        )
    return Outcome(outcome.outputs, outcome.summary, outcome)


def _finish(
    session: Session,
    result: Any,
    skipped: list[str],
    sent: list[str],
    iv: pd.DataFrame | None,
    woe: pd.DataFrame | None,
    output_dir: Path | None,
) -> ScreenOutcome:
    """Either side's end of a screening job: its ledger (the alignment, what it ``sent``, the columns it
    skipped), written with the outcome's first outputs."""
    notes = [f"intersection size {result.size}; set sizes {dict(result.set_sizes)}", *sent]
    if skipped:
        notes.append(f"text columns not screened: {', '.join(skipped)}")
    ledger = ledger_for(session, notes)
    outcome = ScreenOutcome(iv, woe, result.size, ledger, skipped=skipped)
    if output_dir is not None:
        outcome.outputs = write_outputs(output_dir, None, ledger)
    return outcome


def _two_classes(labels: np.ndarray) -> None:
    if len(np.unique(labels)) < 2:
        raise DataError("the aligned rows have one label class only; WOE and IV need events and non-events")


def host(ctx: RoleContext) -> Outcome:
    """A host's role of a screening job: per-bin counts and encrypted label sums of its columns."""
    session, job, data, id_column, output_dir = ctx.session, ctx.job, ctx.data, ctx.id_column, ctx.output_dir
    assert data is not None
    view = checked_view(data, ctx.streamed, ())  # the column checks ran when the file was loaded
    features = session.guard(lambda: feature_columns(view, id_column, None, ctx.columns))
    session.guard(lambda: session.agree(job.settings()))
    result = _align(session, job, data, id_column)
    aligned = aligned_rows(result, data, ctx.streamed, features)
    numeric, skipped = protocol.numeric_columns(aligned[features])
    shared = session.guard(lambda: protocol.run_host(session, _plan(job), aligned[numeric]))
    session.barrier("screen")
    sent = (
        f"sent per-bin row counts of {len(numeric)} column(s) (bins of at least {_options(job).min_bin_size} "
        "customers) and their encrypted per-bin label sums"
    )
    outcome = _finish(session, result, skipped, [sent], shared, None, output_dir)
    if output_dir is not None and shared is not None:
        outcome.outputs["iv"] = atomic_write_text(output_dir / "iv.csv", shared.to_csv(index=False))
    return Outcome(outcome.outputs, outcome.summary, outcome)
