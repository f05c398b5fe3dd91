"""Run this party's role of a job from its workspace: the code behind ``vfl run`` and ``vfl predict``.

Loads ``party.toml``, ``federation.toml`` and ``job.toml``, checks everything that can be checked
before any peer is contacted (data, columns, labels, the model, the output directory), opens the
Flight channel, runs the role through the job registry (``jobs.py``), and writes the outputs
atomically to ``<output dir>/<job id>/``. A job that fails still leaves its ledger there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from vfl.compute import open_backend
from vfl.config import Federation, JobConfig, PartyConfig
from vfl.data import load_table, require_columns
from vfl.errors import ConfigError, OutputError
from vfl.io import check_writable
from vfl.model import ModelShard
from vfl.options import PredictOptions, TrainOptions
from vfl.parties.common import Job, ProgressFn, RowLimit, ledger_for, open_budget, write_outputs
from vfl.parties.guest import check_guest_data
from vfl.parties.host import check_host_data
from vfl.parties.jobs import RoleContext, idle_note, job_kind, run_role
from vfl.parties.network import open_channel
from vfl.psi.ids import prepare_ids
from vfl.psi.options import PsiOptions
from vfl.segmentation.model import MODEL_FILE, SegmentModel
from vfl.service.models import ModelCache
from vfl.streamed_table import StreamedTable, should_stream
from vfl.streaming import read_ids
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


def federation_digest(federation: Federation) -> str:
    """A hash of the federation (parties, roles, order, certificates): agreed before any work."""
    return hashlib.sha256(federation.to_toml().encode()).hexdigest()


def build_job(config: JobConfig, federation: Federation) -> Job:
    """The job every party runs, from the shared job file and the federation (identical everywhere)."""
    guests = federation.with_role("guest")
    hosts = federation.with_role("host")
    arbiters = federation.with_role("arbiter")
    if len(guests) != 1:
        raise ConfigError(f"the federation needs exactly one guest, it has {len(guests)}")
    if not hosts:
        raise ConfigError("the federation has no host; add one with 'vfl federation add'")
    predict = PredictOptions.from_dict(config.predict) if config.kind == "predict" else None
    return Job(
        id=config.id,
        guest=guests[0].id,
        hosts=tuple(h.id for h in hosts),
        arbiter=arbiters[0].id if arbiters else None,
        options=TrainOptions.from_dict(config.train),
        psi=PsiOptions.from_mapping(config.psi),
        reveal=predict.reveal if predict else config.predict.get("reveal"),
        kind=config.kind,
        model=predict.model if predict else None,
        federation_digest=federation_digest(federation),
        screen=config.options("screen") if config.kind == "screen" else None,
        segment=config.options("segment") if config.kind == "segment" else None,
        audience=config.options("audience") if config.kind == "audience" else None,
    )


STREAMED_KINDS = ("train", "predict", "screen", "segment", "audience")  # PSI jobs read the ids only


def _kept_columns(party: PartyConfig, job: Job) -> list[str]:
    """What a streamed job keeps in memory for every row: the id, and what the role needs up front
    (the guest's label and exposure for training, its label for screening, its outcome for segmenting;
    an audience job's own segment and metric columns, since its cross-tab takes every row)."""
    guest = party.role == "guest"
    if job.kind == "audience" and job.audience is not None:
        segments, metrics = job.audience.columns_of(party.id)
        up_front = [party.label_column if guest else None, *segments, *metrics]
    else:
        up_front = {
            "train": [party.label_column, job.options.exposure] if guest else [],
            "screen": [party.label_column] if guest else [],
            "segment": [job.segment.outcome] if guest and job.segment is not None else [],
        }.get(job.kind, [])
    return [party.id_column, *(c for c in up_front if c)]


def _load_data(
    party: PartyConfig, job: Job, data: Path | None, *, with_label: bool
) -> tuple[pd.DataFrame, StreamedTable | None]:
    """Load and check this party's data before any peer is contacted: columns, ids, labels.

    A job on a file of at least ``[compute] stream_bytes`` loads only the id and what the role needs
    of every row up front (``_kept_columns``) and checks the other columns in one streamed pass; its
    ``StreamedTable`` reads the job's columns of the aligned rows after the PSI.
    """
    source = data or party.data
    if source is None:
        raise ConfigError(
            f"party '{party.id}' has no data; set [data] path in {party.workspace / 'party.toml'}"
        )
    streamed = (
        StreamedTable.open(source, party.id_column, batch_rows=party.batch_rows)
        if job.kind in STREAMED_KINDS and should_stream(source, party.stream_bytes)
        else None
    )
    # A PSI job reads only the ids, streamed in batches: memory bounded by the ids, not the table.
    if job.kind == "psi":
        frame = read_ids(source, party.id_column)
    elif streamed is not None:
        frame = streamed.load(_kept_columns(party, job))
    else:
        frame = load_table(source, id_column=party.id_column)
    header = streamed.header() if streamed is not None else frame
    require_columns(header, [party.id_column], what=f"data file {source}")
    if party.columns and job.kind != "psi":
        require_columns(header, party.columns, what=f"data file {source} (see [data] columns in party.toml)")
    prepare_ids(
        frame[party.id_column],
        normalization=job.psi.normalization,
        dedupe=job.psi.dedupe,
        column=party.id_column,
    )
    if with_label and party.role == "guest":
        assert party.label_column is not None
        check_guest_data(
            frame, party.id_column, party.label_column, party.columns, party.positive,
            model=job.options.model, exposure=job.options.exposure, streamed=streamed,
        )  # fmt: skip
    elif with_label:
        check_host_data(frame, party.id, party.id_column, party.columns, streamed=streamed)
    return frame, streamed


def _prepare_output(out: Path, *, force: bool, restart: bool) -> Path:
    """The job's output folder, refusing to overwrite a finished run unless ``force``."""
    if restart:
        shutil.rmtree(out / "state", ignore_errors=True)
    if _finished(out) and not force:
        raise OutputError(
            f"job folder {out} already holds the outputs of a finished run; give the job another id, "
            "or pass --force to overwrite them"
        )
    return check_writable(out)


def _finished(out: Path) -> bool:
    """Whether ``out`` holds a completed run (its ledger says so; a failed run may be run again)."""
    try:
        return json.loads((out / "ledger.json").read_text()).get("status", "completed") == "completed"
    except (OSError, ValueError, AttributeError):
        return False


def run_party(
    workspace: str | Path,
    job_file: str | Path,
    *,
    federation_file: str | Path | None = None,
    data: str | Path | None = None,
    progress: ProgressFn | None = None,
    settings: FlightSettings | None = None,
    workers: int | None = None,
    force: bool = False,
    restart: bool = False,
    listen: str | None = None,
    models: ModelCache | None = None,
    row_limit: RowLimit | None = None,
) -> RunOutcome:
    """Run this party's role of the job in ``job_file``; return what it wrote.

    ``listen`` overrides the inbox address of party.toml (a service runs each job on its own port);
    ``models`` holds model shards loaded already (a serving party's warm worker); ``row_limit`` the
    rows cap its service accepted the job under (the PSI stops a job that shares more).
    """
    party = PartyConfig.load(workspace)
    federation = Federation.load(federation_file or party.workspace / "federation.toml")
    config = JobConfig.load(job_file)
    job = replace(build_job(config, federation), row_limit=row_limit)
    kind = job_kind(config.kind)
    role = federation.get(party.id).role
    if role != party.role:
        raise ConfigError(
            f"party '{party.id}' is a {party.role} in party.toml but a {role} in the federation file"
        )
    out = party.output_dir / config.id
    outcome = RunOutcome(party.id, party.role, config.id, config.kind, out)
    if party.role not in kind.roles:
        outcome.summary["note"] = f"the {party.role} takes no part in {config.kind} jobs"
        return outcome
    if party.id not in job.members.parties:
        outcome.summary["note"] = idle_note(job)
        return outcome
    frame = streamed = None
    if party.role != "arbiter":
        frame, streamed = _load_data(party, job, Path(data) if data else None, with_label=kind.needs_label)
    if kind.precheck is not None:  # before anything is written
        kind.precheck(job, party.id, frame, party.id_column, party.label_column, party.columns)
    out = _prepare_output(out, force=force, restart=restart)
    header = streamed.header() if streamed is not None else frame
    model = _load_model(party, job, header, models) if kind.needs_model else None
    # Jobs that release noised aggregates spend this party's privacy budget (vfl/analytics/budget.py).
    budget = (
        open_budget(party.workspace, party.budget) if kind.spends_budget and party.role != "arbiter" else None
    )

    # The compute backend first: a wrong Dask scheduler address fails here, before any peer is contacted.
    backend = open_backend(
        party.compute,
        workers=workers or party.compute_workers,
        where=f"{party.workspace / 'party.toml'} [compute] backend",
    )
    with (
        backend as pool,
        open_channel(party, federation, job_id=config.id, settings=settings, listen=listen) as channel,
    ):
        session = job.session(channel, first_contact=channel.settings.first_contact)
        ctx = RoleContext(
            session, job, frame, id_column=party.id_column, label=party.label_column, columns=party.columns,
            positive=party.positive, output_dir=out, workers=pool, progress=progress, resumable=True, model=model,
            source=Path(data or party.data).name if (data or party.data) else None,
            segment_policy=party.segment_policy, budget=budget, streamed=streamed,
        )  # fmt: skip
        try:
            result = run_role(config.kind, ctx)
        except BaseException:
            _write_failure_ledger(session, out)
            raise
        finally:
            if budget is not None:
                budget.close()
    outcome.outputs, outcome.summary = result.outputs, result.summary
    return outcome


def _write_failure_ledger(session: Any, out: Path) -> None:
    """Even a failed job leaves its ledger: what crossed before it stopped (best effort)."""
    try:
        write_outputs(
            out, None, ledger_for(session, ["the job stopped before it completed"], status="failed")
        )
    except Exception as exc:  # noqa: BLE001 - never hide the job's own error behind this one
        log.warning("could not write the ledger of the failed job: %s", exc)


def _load_model(
    party: PartyConfig, job: Job, frame: pd.DataFrame | None, models: ModelCache | None = None
) -> ModelShard | SegmentModel:
    assert job.model is not None
    segment_model = party.output_dir / job.model / MODEL_FILE
    if segment_model.exists() and not (party.output_dir / job.model / "model.json").exists():
        model = SegmentModel.load(segment_model)
        if frame is not None:
            require_columns(frame, list(model.columns), what=f"the data assigned with model '{job.model}'")
        return model
    path = party.output_dir / job.model / "model.json"
    shard = models.get(path) if models is not None and path.exists() else ModelShard.load(path)
    if frame is not None:
        require_columns(frame, shard.scaler().input_names, what=f"the data scored with model '{job.model}'")
    return shard
