"""A host (passive party): holds feature columns about the guest's customers, never the label."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from vfl.parties.common import (
    Job,
    ProgressFn,
    agree_on_job,
    checkpointing,
    fail_fast,
    feature_columns,
    make_shard,
    open_store,
    prepare_features,
    recv_positions,
    require_intersection,
    training_notes,
    write_outputs,
)
from vfl.parties.guest import HELD_OUT_TAG
from vfl.parties.state import Alignment
from vfl.protocols import lr, predict, psi

from vfl.crypto import WorkerPool
from vfl.data import require_columns
from vfl.ledger import Ledger
from vfl.model import ModelShard
from vfl.transport import Channel

log = logging.getLogger(__name__)


@dataclass
class HostOutcome:
    """What a host ends a training job with: its own shard and its ledger, nothing about labels or scores."""

    shard: ModelShard
    epochs: int
    intersection_size: int
    ledger: Ledger
    outputs: dict[str, Path] = field(default_factory=dict)


def train(
    channel: Channel,
    job: Job,
    data: pd.DataFrame,
    *,
    id_column: str,
    columns: list[str] | None = None,
    output_dir: Path | None = None,
    workers: WorkerPool | None = None,
    progress: ProgressFn | None = None,
    resumable: bool = False,
) -> HostOutcome:
    """Run a host's side of a training job: align, prepare its columns, train its weights, score, save."""
    o = job.options

    def check_inputs() -> list[str]:
        require_columns(data, [id_column], what=f"host '{channel.party}' data")
        return feature_columns(data, id_column, None, columns)

    features = fail_fast(channel, job, check_inputs)
    store = open_store(output_dir, job, data[id_column]) if resumable else None
    saved = store.load_alignment() if store is not None else None
    if saved is None or saved.held_out is None:
        fail_fast(channel, job, lambda: agree_on_job(channel, job))
        result = fail_fast(
            channel, job, lambda: psi.run_host(channel, data[id_column], job.guest, job.psi, column=id_column)
        )
        fail_fast(channel, job, lambda: require_intersection(result))
        rows, info = result.rows, {"size": result.size, "set_sizes": dict(result.set_sizes)}
        held_rows = recv_positions(channel, job.guest, HELD_OUT_TAG, len(rows))
        if store is not None:
            store.save_alignment(Alignment(rows, held_rows, info))
        saved = None
    else:
        rows, info, held_rows = saved.rows, saved.info, saved.held_out
        log.info("resuming job %s: alignment of %d rows loaded from %s", job.id, len(rows), store.directory)
    if progress:
        progress("psi", 1, 1, f"{info['size']} shared rows")
    aligned = data.iloc[rows].reset_index(drop=True)
    train_rows = np.setdiff1d(np.arange(len(aligned)), held_rows)

    def prepare() -> tuple:
        return prepare_features(aligned, features, train_rows, o, intercept=False)

    scaler, matrix, names = fail_fast(channel, job, prepare)

    def on_epoch(epoch: int, batch: int, loss: float | None) -> None:
        if progress:
            progress("train", epoch + 1, o.max_epochs, f"batch {batch}")

    trained = lr.run_host(
        channel,
        job.lr_plan,
        matrix[train_rows],
        workers=workers,
        progress=on_epoch,
        **checkpointing(store, resuming=saved is not None),
    )
    if progress:
        progress("train", trained.epochs, trained.epochs, "done")
    scoring = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, tag="train/score")
    predict.send_partial_scores(channel, scoring, matrix @ trained.weights)
    shard = make_shard(channel, job, "host", names, trained.weights, scaler)
    notes = training_notes(info, trained.generations)
    ledger = Ledger.from_log(job_id=job.id, party=channel.party, role="host", log=channel.log, notes=notes)
    outcome = HostOutcome(shard, trained.epochs, info["size"], ledger)
    outcome.outputs = write_outputs(output_dir, shard, ledger)
    if store is not None:
        store.clear()
    return outcome


def score(channel: Channel, job: Job, data: pd.DataFrame, shard: ModelShard, *, id_column: str) -> int:
    """A host's side of scoring new ids: PSI, then its partial scores. Returns the number of rows scored."""
    require_columns(data, [id_column], what=f"host '{channel.party}' data")
    result = psi.run_host(channel, data[id_column], job.guest, job.psi, column=id_column)
    result.require_nonempty()
    aligned = result.align(data)
    matrix = shard.scaler().transform(aligned)
    plan = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, tag="predict/score")
    predict.send_partial_scores(channel, plan, matrix @ shard.weight_vector)
    return len(aligned)
