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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vfl.crypto import PrivateKey, PublicKey, WorkerPool
from vfl.errors import ConfigError
from vfl.io import atomic_write_text
from vfl.model import ModelShard
from vfl.parties import arbiter as arbiter_party
from vfl.parties import audience as audience_party
from vfl.parties import guest as guest_party
from vfl.parties import host as host_party
from vfl.parties.common import Job, ProgressFn, ledger_for, write_outputs
from vfl.protocols import psi
from vfl.protocols.session import Session


@dataclass
class RoleContext:
    """What one party brings to one job."""

    session: Session
    job: Job
    data: pd.DataFrame | None = None
    id_column: str = "id"
    label: str | None = None
    columns: list[str] | None = None
    positive: str | None = None
    output_dir: Path | None = None
    workers: WorkerPool | None = None
    progress: ProgressFn | None = None
    resumable: bool = False
    model: ModelShard | None = None
    keypair: tuple[PublicKey, PrivateKey] | None = None
    source: str | None = None  # the data file's name, for the report's provenance
    budget: Any = None  # audience jobs: the party's PrivacyBudget (None: no budget is kept)
    disable_noise_for_tests: bool = False  # audience jobs: exactness tests only; no option maps to it

    @property
    def role(self) -> str:
        return self.session.role


@dataclass
class Outcome:
    """What one party's role of a job produced."""

    outputs: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    result: Any = None


RoleFn = Callable[[RoleContext], Outcome]


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


# --- psi -------------------------------------------------------------------------------------------


def _psi(ctx: RoleContext) -> Outcome:
    session, job, data = ctx.session, ctx.job, ctx.data
    assert data is not None
    session.guard(lambda: session.agree(job.settings()))
    ids = data[ctx.id_column]
    if ctx.role == "guest":
        result = psi.run_guest(session, ids, list(job.hosts), job.psi, column=ctx.id_column)
    else:
        result = psi.run_host(session, ids, job.guest, job.psi, column=ctx.id_column)
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


def _train_guest(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None and ctx.label is not None
    result = guest_party.train(
        ctx.session, ctx.job, ctx.data, id_column=ctx.id_column, label=ctx.label, columns=ctx.columns,
        positive=ctx.positive, output_dir=ctx.output_dir, workers=ctx.workers, progress=ctx.progress,
        resumable=ctx.resumable, source=ctx.source,
    )  # fmt: skip
    summary = {**result.metrics, "epochs": result.epochs, "intersection": result.intersection_size}
    return Outcome(result.outputs, summary, result)


def _train_host(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None
    result = host_party.train(
        ctx.session, ctx.job, ctx.data, id_column=ctx.id_column, columns=ctx.columns,
        output_dir=ctx.output_dir, workers=ctx.workers, progress=ctx.progress, resumable=ctx.resumable,
    )  # fmt: skip
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
    assert ctx.data is not None and ctx.model is not None
    scores = guest_party.score(ctx.session, ctx.job, ctx.data, ctx.model, id_column=ctx.id_column)
    outputs: dict[str, Path] = {}
    if ctx.output_dir is not None:
        outputs["scores"] = atomic_write_text(ctx.output_dir / "scores.csv", scores.to_csv(index=False))
    outputs.update(write_outputs(ctx.output_dir, None, ledger_for(ctx.session)))
    mean = float(scores["score"].mean()) if len(scores) else 0.0
    return Outcome(outputs, {"rows": len(scores), "mean_score": mean}, scores)


def _predict_host(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None and ctx.model is not None
    rows = host_party.score(ctx.session, ctx.job, ctx.data, ctx.model, id_column=ctx.id_column)
    notes = host_party.revealed_notes(ctx.job)
    outputs = write_outputs(ctx.output_dir, None, ledger_for(ctx.session, notes))
    return Outcome(outputs, {"rows": rows}, rows)


# --- audience --------------------------------------------------------------------------------------


def _audience_guest(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None
    run = audience_party.run_guest(
        ctx.session, ctx.job, ctx.data, id_column=ctx.id_column, label=ctx.label, offered=ctx.columns,
        output_dir=ctx.output_dir, workers=ctx.workers, budget=ctx.budget,
        disable_noise_for_tests=ctx.disable_noise_for_tests,
    )  # fmt: skip
    summary = {"overlap": dict(zip(run.overlap["between"], run.overlap["size"], strict=True))}
    return Outcome(run.outputs, summary, run)


def _audience_host(ctx: RoleContext) -> Outcome:
    assert ctx.data is not None
    run = audience_party.run_host(
        ctx.session, ctx.job, ctx.data, id_column=ctx.id_column, offered=ctx.columns,
        output_dir=ctx.output_dir, workers=ctx.workers, budget=ctx.budget, keypair=ctx.keypair,
        disable_noise_for_tests=ctx.disable_noise_for_tests,
    )  # fmt: skip
    summary = {"overlap": dict(zip(run.overlap["between"], run.overlap["size"], strict=True))}
    return Outcome(run.outputs, summary, run)


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
        JobKind(
            "audience",
            {"guest": _audience_guest, "host": _audience_host},
            precheck=audience_party.precheck,
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
