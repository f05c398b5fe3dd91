"""Run this party's role of a job from its workspace: the code behind ``vfl run`` and ``vfl predict``.

Loads ``party.toml``, ``federation.toml`` and ``job.toml``, checks everything that can be checked
before any peer is contacted (data, columns, output directory), opens the Flight channel, runs the
role, and writes the outputs atomically to ``<output dir>/<job id>/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from vfl.parties import arbiter as arbiter_party
from vfl.parties import guest as guest_party
from vfl.parties import host as host_party
from vfl.parties.common import Job, ProgressFn, write_outputs
from vfl.parties.network import open_channel
from vfl.protocols import psi

from vfl.config import Federation, JobConfig, PartyConfig
from vfl.crypto import WorkerPool
from vfl.data import load_table, require_columns
from vfl.errors import ConfigError
from vfl.io import atomic_write_text, check_writable
from vfl.ledger import Ledger
from vfl.model import ModelShard
from vfl.options import TrainOptions
from vfl.psi.ids import prepare_ids
from vfl.psi.options import PsiOptions
from vfl.transport.flight import FlightSettings

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What one party's run produced: the files it wrote and a summary to show the user."""

    party: str
    role: str
    job: str
    kind: str
    output_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def build_job(config: JobConfig, federation: Federation) -> Job:
    """The job every party runs, from the shared job file and the federation (identical everywhere)."""
    guests = federation.with_role("guest")
    hosts = federation.with_role("host")
    arbiters = federation.with_role("arbiter")
    if len(guests) != 1:
        raise ConfigError(f"the federation needs exactly one guest, it has {len(guests)}")
    if not hosts:
        raise ConfigError("the federation has no host; add one with 'vfl federation add'")
    return Job(
        id=config.id,
        guest=guests[0].id,
        hosts=tuple(h.id for h in hosts),
        arbiter=arbiters[0].id if arbiters else None,
        options=TrainOptions.from_dict(config.train),
        psi=PsiOptions.from_mapping(config.psi),
        reveal=config.predict.get("reveal"),
    )


def _load_data(party: PartyConfig, job: Job, data: Path | None, *, with_label: bool) -> pd.DataFrame:
    """Load and check this party's data before any peer is contacted: columns and ids."""
    source = data or party.data
    if source is None:
        raise ConfigError(
            f"party '{party.id}' has no data; set [data] path in {party.workspace / 'party.toml'}"
        )
    frame = load_table(source)
    needed = [party.id_column] + ([party.label_column] if party.label_column and with_label else [])
    require_columns(frame, needed, what=f"data file {source}")
    if party.columns:
        require_columns(frame, party.columns, what=f"data file {source} (see [data] columns in party.toml)")
    prepare_ids(
        frame[party.id_column],
        normalization=job.psi.normalization,
        dedupe=job.psi.dedupe,
        column=party.id_column,
    )
    return frame


def run_party(
    workspace: str | Path,
    job_file: str | Path,
    *,
    federation_file: str | Path | None = None,
    data: str | Path | None = None,
    progress: ProgressFn | None = None,
    settings: FlightSettings | None = None,
    workers: int | None = None,
) -> RunOutcome:
    """Run this party's role of the job in ``job_file``; return what it wrote."""
    party = PartyConfig.load(workspace)
    federation = Federation.load(federation_file or party.workspace / "federation.toml")
    config = JobConfig.load(job_file)
    job = build_job(config, federation)
    if config.kind == "train" and job.psi.reveal != "all":
        raise ConfigError(
            f'{job_file} [psi]: a training job needs reveal = "all" (with "guest-only" the hosts '
            "would not know their rows); use a psi job for overlap analysis"
        )
    role = federation.get(party.id).role
    if role != party.role:
        raise ConfigError(
            f"party '{party.id}' is a {party.role} in party.toml but a {role} in the federation file"
        )
    out = check_writable(party.output_dir / config.id)
    outcome = RunOutcome(party.id, party.role, config.id, config.kind, out)
    if party.role == "arbiter" and config.kind != "train":
        outcome.summary["note"] = f"the arbiter takes no part in {config.kind} jobs"
        return outcome
    frame = None
    if party.role != "arbiter":
        frame = _load_data(party, job, Path(data) if data else None, with_label=config.kind == "train")
    model = _load_model(party, config) if config.kind == "predict" else None

    with (
        open_channel(party, federation, job_id=config.id, settings=settings) as channel,
        WorkerPool(workers) as pool,
    ):
        if config.kind == "train":
            _train(channel, job, party, frame, out, pool, progress, outcome)
        elif config.kind == "psi":
            _psi(channel, job, party, frame, out, progress, outcome)
        else:
            _predict(channel, job, party, frame, model, out, outcome)
    return outcome


def _train(channel, job, party, frame, out, pool, progress, outcome) -> None:  # noqa: ANN001
    if party.role == "guest":
        result = guest_party.train(
            channel, job, frame, id_column=party.id_column, label=party.label_column,
            columns=party.columns, output_dir=out, workers=pool, progress=progress, resumable=True,
        )  # fmt: skip
        outcome.summary.update(result.metrics, epochs=result.epochs, intersection=result.intersection_size)
    elif party.role == "host":
        result = host_party.train(
            channel, job, frame, id_column=party.id_column, columns=party.columns,
            output_dir=out, workers=pool, progress=progress, resumable=True,
        )  # fmt: skip
        outcome.summary.update(epochs=result.epochs, intersection=result.intersection_size)
    else:
        result = arbiter_party.train(channel, job, output_dir=out, workers=pool, resumable=True)
        outcome.summary.update(epochs=result.summary.epochs, final_loss=result.summary.losses[-1])
    outcome.outputs = result.outputs


def _psi(channel, job, party, frame, out, progress, outcome) -> None:  # noqa: ANN001
    ids = frame[party.id_column]
    if party.role == "guest":
        result = psi.run_guest(channel, ids, list(job.hosts), job.psi, column=party.id_column)
    else:
        result = psi.run_host(channel, ids, job.guest, job.psi, column=party.id_column)
    if progress:
        progress("psi", 1, 1, f"{result.size} shared rows")
    ledger = Ledger.from_log(job_id=job.id, party=party.id, role=party.role, log=channel.log)
    outcome.outputs = write_outputs(out, None, ledger)
    if result.rows_revealed:
        aligned = pd.DataFrame({"position": range(result.size), party.id_column: result.ids.to_numpy()})
        outcome.outputs["aligned"] = atomic_write_text(out / "aligned_ids.csv", aligned.to_csv(index=False))
    outcome.summary.update(intersection=result.size, set_sizes=dict(result.set_sizes))


def _load_model(party: PartyConfig, config: JobConfig) -> ModelShard:
    model_job = config.predict.get("model")
    if not isinstance(model_job, str) or not model_job:
        raise ConfigError('a predict job needs [predict] model = "<id of the training job>" in job.toml')
    return ModelShard.load(party.output_dir / model_job / "model.json")


def _predict(channel, job, party, frame, model, out, outcome) -> None:  # noqa: ANN001
    if party.role == "guest":
        scores = guest_party.score(channel, job, frame, model, id_column=party.id_column)
        outcome.outputs["scores"] = atomic_write_text(out / "scores.csv", scores.to_csv(index=False))
        outcome.summary.update(
            rows=len(scores), mean_score=float(scores["score"].mean()) if len(scores) else 0.0
        )
    else:
        outcome.summary.update(rows=host_party.score(channel, job, frame, model, id_column=party.id_column))
    ledger = Ledger.from_log(job_id=job.id, party=party.id, role=party.role, log=channel.log)
    outcome.outputs.update(write_outputs(out, None, ledger))
