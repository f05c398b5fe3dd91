"""The registry of job kinds: which function runs each role of each kind of job.

``vfl run`` (``runner.py``) and ``vfl.simulate`` (``simulation.py``) both go through ``run_role``,
so a job behaves the same between machines and in one process. Every role function takes a
``RoleContext`` (the party's session, job, data, output folder, ...) and returns an ``Outcome``
(the files it wrote, a summary for the user, and the role's own result object).

A new kind of job is one protocol module in ``protocols/`` plus one ``JobKind`` entry here (and its
``[section]`` of job.toml in ``vfl/config.py``'s ``JOB_SECTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vfl.errors import ConfigError
from vfl.io import atomic_write_text
from vfl.parties import arbiter as arbiter_party
from vfl.parties import audience as audience_party
from vfl.parties import guest as guest_party
from vfl.parties import host as host_party
from vfl.parties import screen as screen_party
from vfl.parties import segment as segment_party
from vfl.parties.alignment import run_psi
from vfl.parties.common import Job, ledger_for, write_outputs
from vfl.parties.context import Outcome, RoleContext, RoleFn
from vfl.segmentation.model import SegmentModel


@dataclass(frozen=True)
class JobKind:
    """One kind of job: a function per role, and what the roles need from their workspace."""

    name: str
    roles: Mapping[str, RoleFn]
    needs_label: bool = False  # the guest's data must have its label column
    needs_model: bool = False  # every data party loads its shard of [predict] model
    uses_arbiter: bool = False
    # checks a party makes alone before anything is written or any peer contacted:
    # precheck(job, party, frame, id_column, label, offered columns)
    precheck: Callable[..., Any] | None = None
    spends_budget: bool = False  # releases noised aggregates: opens the party's privacy budget


def _call(role: Callable[..., Any], ctx: RoleContext, *fields: str, **renamed: str) -> Any:
    """Call a party's role function with the session, the job and the data, then the context's ``fields``
    as keywords of the same name and the ``renamed`` ones as ``parameter="field"``."""
    assert ctx.data is not None
    keywords = {name: getattr(ctx, name) for name in fields}
    keywords.update({parameter: getattr(ctx, name) for parameter, name in renamed.items()})
    return role(ctx.session, ctx.job, ctx.data, **keywords)


# --- psi -------------------------------------------------------------------------------------------


def _psi(ctx: RoleContext) -> Outcome:
    session, job, data = ctx.session, ctx.job, ctx.data
    assert data is not None
    session.guard(lambda: session.agree(job.settings()))
    result = run_psi(session, job, data[ctx.id_column], job.psi, column=ctx.id_column, workers=ctx.workers)
    if ctx.progress:
        ctx.progress("psi", 1, 1, f"{result.size} shared rows")
    session.barrier("psi")
    outputs = write_outputs(ctx.output_dir, None, ledger_for(session))
    if result.rows_revealed and ctx.output_dir is not None:
        aligned = pd.DataFrame({"position": range(result.size), ctx.id_column: result.ids.to_numpy()})
        outputs["aligned"] = atomic_write_text(
            ctx.output_dir / "aligned_ids.csv", aligned.to_csv(index=False)
        )
    return Outcome(outputs, {"intersection": result.size, "set_sizes": dict(result.set_sizes)}, result)


# --- train -----------------------------------------------------------------------------------------


def idle_note(job: Job) -> str:
    """What an arbiter of the federation is told when a training job runs without it."""
    return (
        f'the arbiter takes no part in job {job.id}: it trains with topology = "arbiter-free" (every data '
        "party holds its own key); the arbiter stays idle"
    )


def _train_guest(ctx: RoleContext) -> Outcome:
    result = guest_party.train(ctx)
    summary = {
        **result.metrics, "positive class": result.positive, "epochs": result.epochs,
        "intersection": result.intersection_size,
    }  # fmt: skip
    return Outcome(result.outputs, summary, result)


def _train_host(ctx: RoleContext) -> Outcome:
    result = host_party.train(ctx)
    return Outcome(
        result.outputs, {"epochs": result.epochs, "intersection": result.intersection_size}, result
    )


def _train_arbiter(ctx: RoleContext) -> Outcome:
    result = arbiter_party.train(
        ctx.session, ctx.job, keypair=ctx.keypair, output_dir=ctx.output_dir, workers=ctx.workers,
        resumable=ctx.resumable,
    )  # fmt: skip
    return Outcome(
        result.outputs, {"epochs": result.summary.epochs, "final_loss": result.summary.losses[-1]}, result
    )


# --- predict ---------------------------------------------------------------------------------------


def _predict_guest(ctx: RoleContext) -> Outcome:
    assert ctx.model is not None
    if isinstance(ctx.model, SegmentModel):
        return _assign_guest(ctx)
    scores = _call(guest_party.score, ctx, "id_column", "workers", "streamed", shard="model")
    outputs: dict[str, Path] = {}
    if ctx.output_dir is not None:
        outputs["scores"] = atomic_write_text(ctx.output_dir / "scores.csv", scores.to_csv(index=False))
    outputs.update(write_outputs(ctx.output_dir, None, ledger_for(ctx.session)))
    numeric = pd.api.types.is_numeric_dtype(scores["score"]) and not any(c.startswith("p_") for c in scores)
    mean = float(scores["score"].mean()) if len(scores) and numeric else 0.0
    return Outcome(outputs, {"rows": len(scores), "mean_score": mean}, scores)


def _predict_host(ctx: RoleContext) -> Outcome:
    assert ctx.model is not None
    if isinstance(ctx.model, SegmentModel):
        return _assign_host(ctx)
    rows = _call(host_party.score, ctx, "id_column", "workers", "streamed", shard="model")
    notes = host_party.revealed_notes(ctx.job)
    outputs = write_outputs(ctx.output_dir, None, ledger_for(ctx.session, notes))
    return Outcome(outputs, {"rows": rows}, rows)


# --- segment ---------------------------------------------------------------------------------------


def _segment_io(ctx: RoleContext) -> segment_party.PartyIO:
    return segment_party.PartyIO(
        ctx.id_column, ctx.columns, ctx.output_dir, ctx.workers, ctx.budget, ctx.streamed
    )


def _segment_guest(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None
    run = segment_party.run_guest(ctx.session, ctx.job, ctx.data, _segment_io(ctx), label=ctx.label)
    summary = {"intersection": run.intersection, "segments": int(len(run.profiles))}
    return Outcome(run.outputs, summary, run)


def _segment_host(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None
    run = segment_party.run_host(
        ctx.session, ctx.job, ctx.data, _segment_io(ctx), policy=ctx.segment_policy, keypair=ctx.keypair
    )
    return Outcome(run.outputs, {"intersection": run.intersection, "segments": int(len(run.profiles))}, run)


def _assign_guest(ctx: RoleContext) -> Outcome:
    """``vfl predict`` with a segment model: the segment of every new shared customer, at the guest."""
    assert ctx.data is not None and isinstance(ctx.model, SegmentModel)
    segments = segment_party.assign_guest(ctx.session, ctx.job, ctx.data, ctx.model, _segment_io(ctx))
    outputs = {}
    if ctx.output_dir is not None:
        outputs = {"segments": ctx.output_dir / "segments.csv", "ledger": ctx.output_dir / "ledger.json"}
    return Outcome(outputs, {"rows": len(segments)}, segments)


def _assign_host(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None and isinstance(ctx.model, SegmentModel)
    rows = segment_party.assign_host(
        ctx.session,
        ctx.job,
        ctx.data,
        ctx.model,
        _segment_io(ctx),
        policy=ctx.segment_policy,
        keypair=ctx.keypair,
    )
    outputs = {"ledger": ctx.output_dir / "ledger.json"} if ctx.output_dir is not None else {}
    return Outcome(outputs, {"rows": rows}, rows)


# --- audience --------------------------------------------------------------------------------------


def _audience(ctx: RoleContext, role: Callable[..., Any], *fields: str) -> Outcome:
    """Either side of an audience job: the fields both take, then the side's own ``fields``."""
    run = _call(
        role, ctx, "id_column", "output_dir", "workers", "budget", "disable_noise_for_tests", *fields,
        offered="columns",
    )  # fmt: skip
    summary = {"overlap": dict(zip(run.overlap["between"], run.overlap["size"], strict=True))}
    return Outcome(run.outputs, summary, run)


def _audience_guest(ctx: RoleContext) -> Outcome:
    return _audience(ctx, audience_party.run_guest, "label", "keypair")


def _audience_host(ctx: RoleContext) -> Outcome:
    return _audience(ctx, audience_party.run_host, "keypair")


JOB_KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("psi", {"guest": _psi, "host": _psi}),
        JobKind(
            "train",
            {"guest": _train_guest, "host": _train_host, "arbiter": _train_arbiter},
            needs_label=True,
            uses_arbiter=True,
        ),
        JobKind("predict", {"guest": _predict_guest, "host": _predict_host}, needs_model=True),
        JobKind("screen", {"guest": screen_party.guest, "host": screen_party.host}, needs_label=True),
        JobKind("segment", {"guest": _segment_guest, "host": _segment_host}, spends_budget=True),
        JobKind(
            "audience",
            {"guest": _audience_guest, "host": _audience_host},
            precheck=audience_party.precheck,
            spends_budget=True,
        ),
    )
}


def job_kind(name: str) -> JobKind:
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown kind of job {name!r}; known kinds: {', '.join(JOB_KINDS)}") from None


def run_role(kind: str, ctx: RoleContext) -> Outcome:
    """Run this party's role of a job of ``kind``."""
    roles = job_kind(kind).roles
    if ctx.role not in roles:
        return Outcome(summary={"note": f"the {ctx.role} takes no part in {kind} jobs"})
    return roles[ctx.role](ctx)
