"""A host (passive party): holds feature columns about the guest's customers, never the label."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.crypto import WorkerPool
from vfl.data import check_columns, require_columns
from vfl.ledger import Ledger
from vfl.model import ModelShard
from vfl.optim import max_rounds
from vfl.parties.alignment import (
    align_for_training,
    aligned_rows,
    checked_view,
    require_min_intersection,
    run_psi,
)
from vfl.parties.common import (
    Job,
    checkpointing,
    end_training,
    feature_columns,
    make_shard,
    prepare_features,
    start_training,
    train_weights,
    trainer,
    training_notes,
    write_outputs,
)
from vfl.parties.context import RoleContext
from vfl.parties.state import Alignment
from vfl.protocols import predict
from vfl.protocols.session import Session
from vfl.protocols.split import receive_held_out

log = logging.getLogger(__name__)


@dataclass
class HostOutcome:
    """What a host ends a training job with: its own shard and its ledger, nothing about labels or scores."""

    shard: ModelShard
    epochs: int
    intersection_size: int
    ledger: Ledger
    outputs: dict[str, Path] = field(default_factory=dict)


def check_host_data(
    data: pd.DataFrame, party: str, id_column: str, columns: list[str] | None, *, streamed: Any = None
) -> list[str]:
    """Everything about a host's data that can be checked before any peer is contacted.

    With ``streamed`` (a ``StreamedTable``: ``data`` holds the id only) the columns are checked in
    one streamed pass of the file, the same checks and errors.
    """
    header = streamed.header() if streamed is not None else data
    require_columns(header, [id_column], what=f"host '{party}' data")
    features = feature_columns(header, id_column, None, columns)
    if streamed is not None:
        streamed.check(features, what=f"host '{party}' data")
    else:
        check_columns(data[features], what=f"host '{party}' data")
    return features


def revealed_notes(job: Job) -> list[str]:
    """What a host's own messages reveal, in its ledger (DESIGN.md §7)."""
    if len(job.hosts) == 1 or job.scoring_reveal == "partial":
        return ["its partial scores of the aligned rows were sent to the guest in plaintext (fixed point)"]
    return ["its partial scores were sent to the guest under masks that cancel only in the sum over hosts"]


def train(ctx: RoleContext) -> HostOutcome:
    """Run a host's side of a training job: align, prepare its columns, train its weights, score, save."""
    session, job, data, id_column, columns = ctx.session, ctx.job, ctx.data, ctx.id_column, ctx.columns
    output_dir, workers, progress, keypair = ctx.output_dir, ctx.workers, ctx.progress, ctx.keypair
    assert data is not None
    o = job.options
    streamed = ctx.streamed
    features = session.guard(
        lambda: check_host_data(data, session.party, id_column, columns, streamed=streamed)
    )
    training = trainer(job)
    store, start = start_training(
        session, job, data[id_column], output_dir, resumable=ctx.resumable, coordinator=training.coordinator
    )
    saved = start.saved if start.saved is not None and start.saved.held_out is not None else None
    if saved is None:
        rows, info = align_for_training(session, job, data[id_column], column=id_column, workers=workers)
        session.guard(lambda: require_min_intersection(info["size"], o))
        held_rows = receive_held_out(session, job.guest, len(rows))
        if store is not None:
            store.save_alignment(Alignment(rows, held_rows, info))
    else:
        rows, info, held_rows = saved.rows, saved.info, saved.held_out
        log.info("resuming job %s: alignment of %d rows loaded from %s", job.id, len(rows), store.directory)
    if progress:
        progress("psi", 1, 1, f"{info['size']} shared rows")
    aligned = session.guard(
        lambda: (
            streamed.aligned(data, rows, features)
            if streamed is not None
            else data.iloc[rows].reset_index(drop=True)
        )
    )
    train_rows = np.setdiff1d(np.arange(len(aligned)), held_rows)
    scaler, matrix, names = session.guard(
        lambda: prepare_features(aligned, features, train_rows, o, intercept=False)
    )

    def on_epoch(epoch: int, batch: int, loss: float | None) -> None:
        if progress:
            progress("train", epoch + 1, max_rounds(len(train_rows), o), f"batch {batch}")

    trained = train_weights(
        session, o, matrix, train_rows, intercept=False,
        run=lambda train_matrix: training.run_host(
            session, train_matrix, keypair=keypair, workers=workers, progress=on_epoch,
            interrupted=start.interrupted,
            **checkpointing(store, resuming=saved is not None or start.interrupted is not None),
        ),
    )  # fmt: skip
    if progress:
        progress("train", trained.epochs, trained.epochs, "done")
    scoring = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, stage="train-score")
    session.guard(lambda: predict.send_partial_matrix(session, scoring, matrix @ trained.weights))
    shard = session.guard(lambda: make_shard(session, job, "host", names, trained.weights, scaler))
    ledger = end_training(
        session, output_dir, training_notes(info, trained.generations) + revealed_notes(job)
    )
    outcome = HostOutcome(shard, trained.epochs, info["size"], ledger)
    outcome.outputs = write_outputs(output_dir, shard, ledger)
    if store is not None:
        store.clear()
    return outcome


def score(
    session: Session, job: Job, data: pd.DataFrame, shard: ModelShard, *, id_column: str,
    workers: WorkerPool | None = None, streamed: Any = None,
) -> int:  # fmt: skip
    """A host's side of scoring new ids: PSI, then its partial scores. Returns the number of rows scored."""
    needed = [id_column, *shard.scaler().input_names]
    view = checked_view(data, streamed, ())
    session.guard(lambda: require_columns(view, needed, what=f"host '{session.party}' data"))
    session.guard(lambda: session.agree(job.settings()))
    result = run_psi(session, job, data[id_column], job.psi, column=id_column, workers=workers)
    session.guard(result.require_nonempty)
    aligned = aligned_rows(result, data, streamed, needed)
    partial = session.guard(lambda: shard.scaler().transform(aligned) @ shard.weight_vector)
    plan = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, stage="predict")
    session.guard(lambda: predict.send_partial_matrix(session, plan, partial))
    session.barrier("predict")
    return len(aligned)
