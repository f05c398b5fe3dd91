"""The guest (active party): holds the label, runs PSI with every host, trains, scores and evaluates."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from vfl.baseline import Baseline, fit_baseline
from vfl.calibration import Calibrator, fit_calibrator, sigmoid
from vfl.crypto import WorkerPool
from vfl.data import binary_labels, check_columns, positive_class, require_columns
from vfl.errors import DataError
from vfl.io import atomic_write_json, atomic_write_text
from vfl.ledger import Ledger
from vfl.metrics import Evaluation, evaluate, jsonable
from vfl.model import ModelShard
from vfl.optim import max_rounds
from vfl.parties.common import (
    Job,
    ProgressFn,
    begin,
    checkpointing,
    feature_columns,
    ledger_for,
    make_shard,
    open_store,
    precondition_features,
    prepare_features,
    require_intersection,
    require_min_intersection,
    training_notes,
    write_outputs,
)
from vfl.parties.state import Alignment
from vfl.protocols import lr, predict, psi
from vfl.protocols.session import Session
from vfl.protocols.split import send_held_out
from vfl.report import build_report_data, write_report

log = logging.getLogger(__name__)


@dataclass
class GuestOutcome:
    """Everything the guest ends a training job with."""

    shard: ModelShard
    evaluation: Evaluation
    scores: pd.DataFrame  # id column, score, held_out
    losses: list[float]
    epochs: int
    intersection_size: int
    ledger: Ledger
    positive: str = "1"
    calibrator: Calibrator | None = None
    baseline: Baseline | None = None
    data_files: list[dict[str, Any]] = field(default_factory=list)
    input_rows: np.ndarray | None = None  # each score's row in the guest's input (scores are in shared order)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return self.evaluation.metrics


def split_rows(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / held-out positions of the aligned rows (sorted, so they keep the shared order)."""
    positions = np.arange(len(labels))
    counts = np.bincount(labels.astype(int), minlength=2)
    if counts.min() < 2 or len(labels) * test_size < 2:
        raise DataError(
            "the aligned rows do not have at least two labels of each class for a held-out split; "
            "align more rows or change test_size"
        )
    train, held = train_test_split(positions, test_size=test_size, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(held)


def check_guest_data(
    data: pd.DataFrame, id_column: str, label: str, columns: list[str] | None, positive: str | None
) -> list[str]:
    """Everything about the guest's data that can be checked before any peer is contacted."""
    require_columns(data, [id_column, label], what="the guest's data")
    features = feature_columns(data, id_column, label, columns)
    binary_labels(data[label], column=label, positive=positive)
    check_columns(data[features], what="the guest's data")
    return features


def train(
    session: Session,
    job: Job,
    data: pd.DataFrame,
    *,
    id_column: str,
    label: str,
    columns: list[str] | None = None,
    positive: str | None = None,
    output_dir: Path | None = None,
    workers: WorkerPool | None = None,
    progress: ProgressFn | None = None,
    resumable: bool = False,
    source: str | None = None,
) -> GuestOutcome:
    """Run the guest's side of a whole training job: align, split, prepare, train, score, evaluate, save.

    With ``resumable`` (and an ``output_dir``) the alignment and every epoch's state are saved, and a
    restarted run of the same job rejoins training where the federation is.
    """
    o = job.options
    plan = job.lr_plan
    features = session.guard(lambda: check_guest_data(data, id_column, label, columns, positive))
    positive_label = positive_class(data[label], column=label, positive=positive)
    store = open_store(output_dir, job, data[id_column]) if resumable else None
    start = begin(session, job, store, coordinator=plan.arbiter)
    saved = start.saved
    if saved is None:
        result = psi.run_guest(session, data[id_column], list(job.hosts), job.training_psi, column=id_column)
        session.guard(lambda: require_intersection(result))
        rows, info = result.rows, {"size": result.size, "set_sizes": dict(result.set_sizes)}
    else:
        rows, info = saved.rows, saved.info
        log.info("resuming job %s: alignment of %d rows loaded from %s", job.id, len(rows), store.directory)
    session.guard(lambda: require_min_intersection(info["size"], o))
    if progress:
        progress("psi", 1, 1, f"{info['size']} shared rows")

    def prepare() -> tuple:
        aligned = data.iloc[rows].reset_index(drop=True)
        labels = binary_labels(aligned[label], column=label, positive=positive_label)
        train_rows, held_rows = split_rows(labels, o.test_size, o.seed)
        scaler, matrix, names = prepare_features(aligned, features, train_rows, o, intercept=True)
        return aligned, labels, train_rows, held_rows, scaler, matrix, names

    aligned, labels, train_rows, held_rows, scaler, matrix, names = session.guard(prepare)
    if saved is None and start.interrupted is None:
        send_held_out(session, job.hosts, held_rows)
        if store is not None:
            store.save_alignment(Alignment(rows, None, info))

    def on_epoch(epoch: int, batch: int, loss: float | None) -> None:
        if progress and loss is not None:
            progress("train", epoch + 1, max_rounds(len(train_rows), o), f"loss {loss:.5f}")

    train_matrix, whitening = session.guard(
        lambda: precondition_features(matrix, train_rows, o, intercept=True)
    )
    trained = session.guard(
        lambda: lr.run_guest(
            session,
            plan,
            train_matrix,
            labels[train_rows],
            workers=workers,
            progress=on_epoch,
            interrupted=start.interrupted,
            **checkpointing(store, resuming=saved is not None or start.interrupted is not None),
        )
    )
    if progress:
        progress("train", trained.epochs, trained.epochs, f"done, loss {trained.losses[-1]:.5f}")
    weights = whitening.to_original(trained.weights)  # on the guest's own (standardized) columns
    scoring = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, stage="train-score")
    z = session.guard(lambda: predict.joint_logits(session, scoring, matrix @ weights))
    scores = sigmoid(z)

    def evaluate_locally() -> tuple:
        calibrator = fit_calibrator(z[train_rows], labels[train_rows], method=o.calibration)
        evaluation = evaluate(
            labels[held_rows], scores[held_rows], calibrator=calibrator, positive_label=positive_label,
            train_labels=labels[train_rows], train_scores=scores[train_rows],
        )  # fmt: skip
        baseline = fit_baseline(matrix, labels, train_rows, held_rows, columns=names)
        return calibrator, evaluation, baseline

    calibrator, evaluation, baseline = session.guard(evaluate_locally)
    extras = {"calibrator": calibrator.to_dict(), "positive_class": positive_label}
    shard = session.guard(lambda: make_shard(session, job, "guest", names, weights, scaler, extras))
    held_out = np.zeros(len(aligned), dtype=bool)
    held_out[held_rows] = True
    table = pd.DataFrame(
        {
            id_column: aligned[id_column].to_numpy(),
            "score": scores,
            "probability": calibrator.apply(z),
            "held_out": held_out,
        }
    )
    notes = training_notes(info, trained.generations)
    notes.append(f"positive class: {positive_label!r} (label column '{label}')")
    if job.scoring_reveal == "partial" or len(job.hosts) == 1:
        notes.append(
            "with a single host, the guest can derive the host's partial scores from the final scores"
        )
    if output_dir is not None:
        session.guard(lambda: output_dir.mkdir(parents=True, exist_ok=True))
    session.barrier("train")
    ledger = ledger_for(session, notes)
    outcome = GuestOutcome(
        shard, evaluation, table, trained.losses, trained.epochs, info["size"], ledger, positive_label,
        calibrator=calibrator, baseline=baseline, data_files=[{"name": source or "(in memory)", "rows": len(data)}],
        input_rows=np.asarray(rows),
    )  # fmt: skip
    if output_dir is not None:
        outcome.outputs = write_guest_outputs(output_dir, outcome, job)
    if store is not None:
        store.clear()
    return outcome


def write_guest_outputs(directory: Path, outcome: GuestOutcome, job: Job) -> dict[str, Path]:
    """Model shard, ledger, scores, metrics, the report's data and the HTML report, each written atomically."""
    written = write_outputs(directory, outcome.shard, outcome.ledger)
    # In the order of the guest's input file, with its ids exactly as written there.
    in_input_order = (
        outcome.scores.iloc[np.argsort(outcome.input_rows)]
        if outcome.input_rows is not None
        else outcome.scores
    )
    written["scores"] = atomic_write_text(directory / "scores.csv", in_input_order.to_csv(index=False))
    written["metrics"] = atomic_write_json(
        directory / "metrics.json",
        {
            "metrics": outcome.metrics,
            "positive_class": outcome.positive,
            "threshold": jsonable(outcome.evaluation.thresholds),
            "intervals": jsonable(outcome.evaluation.intervals),
            "warnings": outcome.evaluation.warnings,
            "losses": outcome.losses,
            "epochs": outcome.epochs,
            "intersection_size": outcome.intersection_size,
            "lift": outcome.evaluation.lift.to_dict(orient="records"),
            "roc": outcome.evaluation.roc.to_dict(orient="list"),
        },
    )
    data = build_report_data(
        outcome.evaluation,
        job_id=job.id,
        losses=outcome.losses,
        ledger=outcome.ledger,
        shard=outcome.shard,
        baseline=outcome.baseline,
        calibrator=outcome.calibrator,
        data_files=outcome.data_files,
        options=job.options.to_dict(),
        parties={"guest": job.guest, "hosts": list(job.hosts), "arbiter": job.arbiter},
        epochs=outcome.epochs,
        intersection_size=outcome.intersection_size,
    )
    written["report_data"] = data.save(directory / "report.json")
    written["report"] = write_report(directory / "report.html", data)
    return written


def score(
    session: Session,
    job: Job,
    data: pd.DataFrame,
    shard: ModelShard,
    *,
    id_column: str,
) -> pd.DataFrame:
    """Score new ids with a trained model: PSI on the new ids, then joint scoring. Returns id and score."""
    session.guard(
        lambda: require_columns(data, [id_column, *shard.scaler().input_names], what="the guest's data")
    )
    session.guard(lambda: session.agree(job.settings()))
    result = psi.run_guest(session, data[id_column], list(job.hosts), job.psi, column=id_column)
    session.guard(result.require_nonempty)
    aligned = result.align(data)

    def partial() -> np.ndarray:
        matrix = shard.scaler().transform(aligned)
        if shard.has_intercept:
            matrix = np.hstack([np.ones((len(matrix), 1)), matrix])
        return matrix @ shard.weight_vector

    own = session.guard(partial)
    plan = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, stage="predict")
    z = session.guard(lambda: predict.joint_logits(session, plan, own))
    session.barrier("predict")
    table = pd.DataFrame({id_column: aligned[id_column].to_numpy(), "score": sigmoid(z)})
    if "calibrator" in shard.extras:
        table["probability"] = Calibrator.from_dict(shard.extras["calibrator"]).apply(z)
    # In the order of the guest's input, with its ids exactly as written there.
    return table.iloc[np.argsort(result.rows)].reset_index(drop=True)
