"""The role runtime of an ``audience`` job: check inputs, agree, reserve budget, PSI + cross-tab per host, outputs.

Order of a party's work (DESIGN.md §13):

1. ``check_inputs`` -- locally, before any peer is contacted and before anything is written: every
   segment and metric column of this party is offered (``[data] columns`` of party.toml) and present,
   segment columns have at most ``max_categories`` values, metric columns are numeric without gaps;
2. the agreement (``session.agree``): every ``[audience]`` option is part of the job's settings;
3. the privacy budget: ``reserve`` epsilon with every partner (the guest with each host, a host with
   the guest); a job beyond a cap is refused naming the partner, the spent amount and the cap;
4. per host: the PSI (guest ∩ host, tag ``audience-psi``), then the cross-tab (``protocols/audience.py``);
5. a barrier, then ``commit``; a failure before any noised number left a party ``release``s its
   reservation, a later failure keeps it spent (a crash keeps it too, see ``vfl.analytics.budget``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.analytics import crosstab as ct
from vfl.analytics.budget import PrivacyBudget
from vfl.analytics.options import AudienceJobOptions
from vfl.crypto import generate_keypair
from vfl.errors import ConfigError, DataError
from vfl.io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable
from vfl.ledger import Ledger
from vfl.parties.alignment import require_row_limit
from vfl.parties.budget import reserve_budget
from vfl.parties.common import Job, ledger_for
from vfl.protocols import audience as protocol
from vfl.protocols import psi

log = logging.getLogger(__name__)


@dataclass
class AudienceRun:
    """What one party of an audience job ends with (tables in the released form only)."""

    party: str
    role: str
    overlap: pd.DataFrame
    crosstabs: dict[str, pd.DataFrame] = field(default_factory=dict)  # partner -> released long form
    overlap_by_segment: pd.DataFrame | None = None  # the guest only
    released: list[dict[str, Any]] = field(
        default_factory=list
    )  # every number released: kind, epsilon, who saw it
    ledger: Ledger | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    noise_disabled_for_tests: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (PSI, encryption, fold, ...)


# --- local checks ---------------------------------------------------------------------------------


def options_of(job: Job) -> AudienceJobOptions:
    if not isinstance(job.audience, AudienceJobOptions):
        raise ConfigError("an audience job needs its [audience] options")
    return job.audience


def check_inputs(
    job: Job,
    party: str,
    frame: pd.DataFrame,
    *,
    id_column: str,
    label: str | None,
    offered: list[str] | None,
) -> dict[str, tuple]:
    """Everything this party can check alone; returns its segment categories. Nothing is written."""
    options = options_of(job)
    mech = options.mechanism
    members = set(job.members.data_parties)
    for table_name, table in (("segments", mech.segments), ("metrics", mech.metrics)):
        unknown = sorted(set(table) - members)
        if unknown:
            raise ConfigError(
                f"[audience] {table_name}: {', '.join(map(repr, unknown))} take(s) no part in the job "
                f"(its data parties are {', '.join(job.members.data_parties)})"
            )
    segments, metrics = options.columns_of(party)
    allowed = (
        list(offered) if offered is not None else [c for c in frame.columns if c not in (id_column, label)]
    )
    for option, columns in (("segments", segments), ("metrics", metrics)):
        for col in columns:
            if col not in frame.columns:
                raise DataError(f"[audience] {option}: column {col!r} of party {party!r} is not in its data")
            if col not in allowed:
                raise ConfigError(
                    f"[audience] {option}: column {col!r} of party {party!r} is not offered to jobs; "
                    f"add it to [data] columns in party.toml (offered: {', '.join(allowed) or 'none'})"
                )
    categories = ct.categories_of(frame, segments, mech, party)
    for col in metrics:
        ct.quantize(frame[col], mech.bounds[col], mech.fraction_bits, col)  # numeric, no gaps
    return categories


# --- the start of a job ---------------------------------------------------------------------------


def _partners(job: Job, role: str) -> list[str]:
    return list(job.hosts) if role == "guest" else [job.guest]


def _start(
    session: Any,
    job: Job,
    data: pd.DataFrame,
    id_column: str,
    label: str | None,
    offered: list[str] | None,
    output_dir: Path | None,
    budget: PrivacyBudget | None,
) -> tuple[AudienceJobOptions, dict[str, tuple]]:
    """Local checks, the agreement and the budget reservation: everything before any data moves."""
    options = options_of(job)
    me = session.party
    categories = session.guard(
        lambda: check_inputs(job, me, data, id_column=id_column, label=label, offered=offered)
    )
    if output_dir is not None:
        session.guard(lambda: check_writable(output_dir))
    session.guard(lambda: session.agree(job.settings()))
    spends = dict.fromkeys(_partners(job, session.role), options.epsilon)
    reserve_budget(session, job, budget, spends)
    return options, categories


def host_order(
    result: Any, host: str, cells: np.ndarray, metrics: pd.DataFrame
) -> tuple[np.ndarray, pd.DataFrame]:
    """The guest's cells and metric values by the host's rows (its PSI order): the host encrypts every
    row it has (it never learns which are shared), the guest folds those it shares (cell -1: skipped)."""
    positions = result.host_positions[host]
    n_host = int(result.set_sizes[host])
    by_row = np.full(n_host, -1, dtype=np.int64)
    by_row[positions] = cells
    values = pd.DataFrame(0.0, index=range(n_host), columns=list(metrics.columns))
    values.iloc[positions] = metrics.to_numpy(dtype=np.float64)
    return by_row, values


# --- released numbers -----------------------------------------------------------------------------


def _cell_name(columns: list[str], labels: tuple) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(columns, labels, strict=True)) or "all"


def released_numbers(layout: ct.Layout, frame: pd.DataFrame, guest: str, host: str) -> list[dict[str, Any]]:
    """One entry per number of a cross-tab: kind, epsilon, who saw it (suppressed cells: the guest only)."""
    g_cols, h_cols = list(layout.guest_categories), list(layout.host_categories)
    out = []
    for rec in frame.to_dict(orient="records"):
        cell = (
            _cell_name(g_cols, tuple(rec[c] for c in g_cols))
            + " x "
            + _cell_name(h_cols, tuple(rec[c] for c in h_cols))
        )
        seen = [guest] if rec["suppressed"] else [guest, host]
        for measure in layout.measures:
            out.append({
                "table": f"{guest} x {host}",
                "cell": cell,
                "kind": "count" if measure == "count" else f"sum of {measure}",
                "epsilon": layout.epsilon[measure],
                "noise": "discrete Laplace, one full-strength share from each of the two parties",
                "suppressed": bool(rec["suppressed"]),
                "seen_by": seen,
            })  # fmt: skip
    return out


# --- roles ----------------------------------------------------------------------------------------


def run_guest(
    session: Any,
    job: Job,
    data: pd.DataFrame,
    *,
    id_column: str,
    label: str | None = None,
    offered: list[str] | None = None,
    output_dir: Path | None = None,
    workers: Any = None,
    budget: PrivacyBudget | None = None,
    keypair: Any = None,
    disable_noise_for_tests: bool = False,
) -> AudienceRun:
    """The guest: PSI and cross-tab with each host. ``keypair`` (optional) is its own Paillier key, used when
    a layout has the guest encrypt its rows (generated when needed if not given)."""
    options, categories = _start(session, job, data, id_column, label, offered, output_dir, budget)
    mech, me = options.mechanism, session.party
    timings: dict[str, float] = {}
    exposed = False
    try:
        psi_options = dataclasses.replace(job.psi, tag=protocol.PSI_TAG, reveal=protocol.PSI_REVEAL)
        _, metrics = options.columns_of(me)
        pairs: dict[str, protocol.PairResult] = {}
        shared: dict[str, np.ndarray] = {}
        sizes: dict[str, int] = {me: len(data)}
        for host in job.hosts:
            started = time.perf_counter()
            result = psi.run_guest(session, data[id_column], [host], psi_options, column=id_column)
            timings["psi"] = timings.get("psi", 0.0) + time.perf_counter() - started
            shared[host] = result.rows
            sizes[host] = int(result.set_sizes.get(host, 0))
            session.guard(result.require_nonempty)
            session.guard(lambda result=result, host=host: require_row_limit(job, result.size, host))
            aligned = data.iloc[result.rows].reset_index(drop=True)
            cells, by_row = host_order(result, host, ct.cell_codes(aligned, categories), aligned[metrics])
            exposed = True  # from here on noised numbers may have been seen
            pairs[host] = session.guard(
                lambda host=host, by_row=by_row, cells=cells: protocol.run_guest(
                    session, host, mech, key_bits=options.key_bits, guest_categories=categories,
                    guest_cells=cells, guest_metrics=by_row if metrics else None, workers=workers,
                    keypair=keypair, disable_noise_for_tests=disable_noise_for_tests, timings=timings,
                )
            )  # fmt: skip
        session.barrier("audience")
    except BaseException:
        _finish(budget, job.id, exposed)
        raise
    overlap = _overlap(me, job.hosts, shared, sizes)
    by_segment = _overlap_by_segment(data, categories, shared, mech.k)
    released = [
        {"table": "overlap", "cell": f"{me} ∩ {h}", "kind": "intersection size", "epsilon": 0.0,
         "noise": "none: the PSI reveals the intersection size to both parties", "suppressed": False,
         "seen_by": [me, h]}
        for h in job.hosts
    ]  # fmt: skip
    if len(job.hosts) > 1:
        released.append({
            "table": "overlap", "cell": "all parties", "kind": "intersection size", "epsilon": 0.0,
            "noise": "none: computed by the guest from its own PSI rows", "suppressed": False, "seen_by": [me],
        })  # fmt: skip
    for host, pair in pairs.items():
        released.extend(released_numbers(pair.crosstab.layout, pair.released, me, host))
    if by_segment is not None:
        for rec in by_segment.to_dict(orient="records"):
            released.append({
                "table": "overlap by guest segment", "kind": "shared customers",
                "cell": _cell_name(list(categories), tuple(rec[c] for c in categories)) + f" ∩ {rec['host']}",
                "epsilon": 0.0, "noise": "none: from the guest's own PSI rows, never sent",
                "suppressed": bool(rec["suppressed"]), "seen_by": [me],
            })  # fmt: skip
    run = AudienceRun(
        me, "guest", overlap, {h: p.released for h, p in pairs.items()}, by_segment, released,
        noise_disabled_for_tests=disable_noise_for_tests, timings=timings,
    )  # fmt: skip
    _complete(session, job, run, budget, output_dir)
    return run


def run_host(
    session: Any,
    job: Job,
    data: pd.DataFrame,
    *,
    id_column: str,
    offered: list[str] | None = None,
    output_dir: Path | None = None,
    workers: Any = None,
    budget: PrivacyBudget | None = None,
    keypair: Any = None,
    disable_noise_for_tests: bool = False,
) -> AudienceRun:
    options, categories = _start(session, job, data, id_column, None, offered, output_dir, budget)
    mech, me, guest = options.mechanism, session.party, job.guest
    timings: dict[str, float] = {}
    exposed = False
    try:
        psi_options = dataclasses.replace(job.psi, tag=protocol.PSI_TAG, reveal=protocol.PSI_REVEAL)
        started = time.perf_counter()
        result = psi.run_host(session, data[id_column], guest, psi_options, column=id_column)
        timings["psi"] = time.perf_counter() - started
        session.guard(result.require_nonempty)
        session.guard(lambda: require_row_limit(job, result.size, guest))
        ordered = data.iloc[result.shuffled_rows].reset_index(drop=True)  # every row, in its PSI order
        segments, metrics = options.columns_of(me)
        if keypair is None or keypair[0].bits != options.key_bits:
            keypair = generate_keypair(options.key_bits)
        exposed = True
        layout, released_frame = session.guard(
            lambda: protocol.run_host(
                session, guest, mech, keypair, protocol.HostRows(
                    categories, ordered[segments] if segments else None,
                    ordered[metrics] if metrics else None, len(ordered), result.size,
                ),
                workers=workers, disable_noise_for_tests=disable_noise_for_tests, timings=timings,
            )
        )  # fmt: skip
        session.barrier("audience")
    except BaseException:
        _finish(budget, job.id, exposed)
        raise
    overlap = pd.DataFrame(
        {"between": [f"{guest} ∩ {me}"], "size": [result.size], "set_size_guest": [result.set_sizes.get(guest, 0)],
         "set_size_host": [result.set_sizes.get(me, 0)]}
    )  # fmt: skip
    released = [
        {"table": "overlap", "cell": f"{guest} ∩ {me}", "kind": "intersection size", "epsilon": 0.0,
         "noise": "none: the PSI reveals the intersection size to both parties", "suppressed": False,
         "seen_by": [guest, me]},
    ]  # fmt: skip
    released.extend(released_numbers(layout, released_frame, guest, me))
    run = AudienceRun(
        me, "host", overlap, {guest: released_frame}, None, released,
        noise_disabled_for_tests=disable_noise_for_tests, timings=timings,
    )  # fmt: skip
    _complete(session, job, run, budget, output_dir)
    return run


def _finish(budget: PrivacyBudget | None, job_id: str, exposed: bool) -> None:
    """A clean failure before any noised number moved gives the epsilon back; a later one keeps it spent."""
    if budget is None or exposed:
        return
    try:
        budget.release(job_id)
    except Exception as exc:  # noqa: BLE001 - never hide the job's own error
        log.warning("could not release the privacy budget of job %s: %s", job_id, exc)


def _complete(
    session: Any, job: Job, run: AudienceRun, budget: PrivacyBudget | None, output_dir: Path | None
) -> None:
    if budget is not None:
        budget.commit(job.id)
    notes = [f"{e['kind']} {e['cell']}" for e in run.released if e["table"] == "overlap"]
    if run.noise_disabled_for_tests:
        notes.append("NOISE WAS DISABLED BY A TEST HOOK: the numbers of this run are exact, not private")
    ledger = ledger_for(session, notes)
    ledger.released = run.released  # type: ignore[attr-defined]
    run.ledger = ledger
    if output_dir is not None:
        run.outputs = write_outputs(output_dir, run, job)


def _overlap(
    me: str, hosts: tuple[str, ...], shared: dict[str, np.ndarray], sizes: dict[str, int]
) -> pd.DataFrame:
    rows = [
        {
            "between": f"{me} ∩ {h}",
            "size": len(shared[h]),
            "set_size_guest": sizes[me],
            "set_size_host": sizes[h],
        }
        for h in hosts
    ]
    if len(hosts) > 1:
        common = set(shared[hosts[0]].tolist())
        for h in hosts[1:]:
            common &= set(shared[h].tolist())
        rows.append({"between": "all parties", "size": len(common), "set_size_guest": sizes[me],
                     "set_size_host": math.nan})  # fmt: skip
    return pd.DataFrame(rows)


def _overlap_by_segment(
    data: pd.DataFrame, categories: dict[str, tuple], shared: dict[str, np.ndarray], k: int
) -> pd.DataFrame | None:
    """Shared customers per guest cell and host (from the guest's own PSI rows); cells below k withheld."""
    if not categories:
        return None
    cells = ct.cell_codes(data, categories)
    labels = ct.cell_labels(categories)
    recs = []
    for host, rows in shared.items():
        counts = np.bincount(cells[rows], minlength=len(labels))
        for i, lab in enumerate(labels):
            rec = dict(zip(categories, lab, strict=True))
            ok = counts[i] >= k
            rec.update({"host": host, "shared": float(counts[i]) if ok else math.nan, "suppressed": not ok})
            recs.append(rec)
    return pd.DataFrame.from_records(recs)


# --- outputs --------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_table(directory: Path, stem: str, frame: pd.DataFrame) -> dict[str, Path]:
    import io

    out = {f"{stem}.csv": atomic_write_text(directory / f"{stem}.csv", frame.to_csv(index=False))}
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    out[f"{stem}.parquet"] = atomic_write_bytes(directory / f"{stem}.parquet", buffer.getvalue())
    return out


def write_outputs(directory: Path, run: AudienceRun, job: Job) -> dict[str, Path]:
    """CSV and Parquet tables, the ledger (with every released number) and, at the guest, the HTML report."""
    from vfl.audience_report import write_audience_report

    check_writable(directory)
    written: dict[str, Path] = {}
    written.update(_write_table(directory, "overlap", run.overlap))
    if run.overlap_by_segment is not None:
        written.update(_write_table(directory, "overlap_by_segment", run.overlap_by_segment))
    for partner, frame in run.crosstabs.items():
        written.update(_write_table(directory, f"crosstab_{_safe(partner)}", frame))
    assert run.ledger is not None
    written["ledger"] = run.ledger.save(directory / "ledger.json")
    written["released"] = atomic_write_json(directory / "released.json", run.released)
    if run.role == "guest":
        written["report"] = write_audience_report(
            directory / "audience_report.html", run, options=options_of(job).to_dict(), job_id=job.id
        )
    return written


__all__ = ["AudienceRun", "check_inputs", "run_guest", "run_host", "write_outputs"]


def precheck(
    job: Job,
    party: str,
    frame: pd.DataFrame | None,
    id_column: str,
    label: str | None,
    offered: list[str] | None,
) -> None:
    """``JobKind.precheck``: the runner calls it before it writes anything or contacts a peer."""
    if frame is not None:
        check_inputs(job, party, frame, id_column=id_column, label=label, offered=offered)
