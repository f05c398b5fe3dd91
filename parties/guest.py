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
from vfl.calibration import Calibrator, sigmoid
from vfl.crypto import WorkerPool
from vfl.data import binary_labels, check_columns, positive_class, require_columns
from vfl.errors import DataError
from vfl.io import atomic_write_json, atomic_write_text
from vfl.ledger import Ledger
from vfl.metrics import Evaluation, evaluate_held_out, jsonable
from vfl.model import ModelShard
from vfl.model_reports import kind_report_html
from vfl.models.kinds import from_name as model_kind
from vfl.optim import max_rounds
from vfl.options import TrainOptions
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
from vfl.protocols import lr, predict
from vfl.protocols.session import Session
from vfl.protocols.split import send_held_out
from vfl.report import build_report_data, write_report

log = logging.getLogger(__name__)


@dataclass
class GuestOutcome:
    """Everything the guest ends a training job with."""

    shard: ModelShard
    evaluation: Evaluation | None  # binary-lr; the other kinds have kind_metrics only
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
    model: str = "binary-lr"
    kind_metrics: dict[str, Any] = field(default_factory=dict)  # held-out metrics of a non-binary kind

    @property
    def metrics(self) -> dict[str, Any]:
        return self.evaluation.metrics if self.evaluation is not None else self.kind_metrics


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
    data: pd.DataFrame,
    id_column: str,
    label: str,
    columns: list[str] | None,
    positive: str | None,
    *,
    model: str = "binary-lr",
    exposure: str | None = None,
    streamed: Any = None,
) -> list[str]:
    """Everything about the guest's data that can be checked before any peer is contacted.

    With ``streamed`` (a ``StreamedTable``: ``data`` holds the id, label and exposure only) the
    feature columns are checked in one streamed pass of the file, the same checks and errors.
    """
    header = streamed.header() if streamed is not None else data
    require_columns(header, [id_column, label, *([exposure] if exposure else [])], what="the guest's data")
    features = [c for c in feature_columns(header, id_column, label, columns) if c != exposure]
    if not features:
        raise DataError("the guest's data has no feature columns besides the id, the label and the exposure")
    target_values(data[label], label, positive, model)
    if exposure is not None:
        exposures(data[exposure], exposure)
    if streamed is not None:
        streamed.check(features, what="the guest's data")
    else:
        check_columns(data[features], what="the guest's data")
    return features


def target_values(values: pd.Series, label: str, positive: str | None, model: str) -> np.ndarray:
    """The label column as the model kind trains on it (0/1 for binary-lr), or a one-line DataError."""
    if model == "binary-lr":
        return binary_labels(values, column=label, positive=positive)
    if values.isna().any():
        raise DataError(
            f"label column '{label}' has {int(values.isna().sum())} missing values; every row needs a label"
        )
    try:
        return np.asarray(model_kind(model).check_labels(values.to_numpy()).values, dtype=float)
    except DataError as exc:
        raise DataError(f"label column '{label}': {exc}") from None


def exposures(values: pd.Series, column: str) -> np.ndarray:
    """Poisson exposures: positive finite numbers for every row."""
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(x) | (x <= 0)
    if bad.any():
        raise DataError(
            f"exposure column '{column}' must hold a positive number for every row; {int(bad.sum())} do not "
            f"(first at row {int(np.flatnonzero(bad)[0])})"
        )
    return x


def random_split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out positions for a regression (not stratified), sorted so they keep the shared order."""
    if n * test_size < 2 or n * (1 - test_size) < 2:
        raise DataError("too few aligned rows for a held-out split; align more rows or change test_size")
    train, held = train_test_split(np.arange(n), test_size=test_size, random_state=seed)
    return np.sort(train), np.sort(held)


def train(ctx: RoleContext) -> GuestOutcome:
    """Run the guest's side of a whole training job: align, split, prepare, train, score, evaluate, save.

    With ``resumable`` (and an ``output_dir``) the alignment and every epoch's state are saved, and a
    restarted run of the same job rejoins training where the federation is. In arbiter-free
    training the guest coordinates: restarted with saved epochs, it skips the agreement and
    resynchronizes at once, as the arbiter does in coordinated training (DESIGN.md §12, §15).
    """
    session, job, data, id_column, label = ctx.session, ctx.job, ctx.data, ctx.id_column, ctx.label
    columns, positive, output_dir, workers = ctx.columns, ctx.positive, ctx.output_dir, ctx.workers
    progress, source, keypair = ctx.progress, ctx.source, ctx.keypair
    streamed = ctx.streamed
    assert data is not None and label is not None
    o = job.options
    training = session.guard(lambda: trainer(job))
    binary = o.model == "binary-lr"
    features = session.guard(
        lambda: check_guest_data(
            data, id_column, label, columns, positive, model=o.model, exposure=o.exposure, streamed=streamed
        )
    )
    positive_label = positive_class(data[label], column=label, positive=positive) if binary else ""
    store, start = start_training(
        session, job, data[id_column], output_dir, resumable=ctx.resumable, coordinator=training.coordinator
    )
    saved = start.saved
    if saved is None:
        rows, info = align_for_training(session, job, data[id_column], column=id_column, workers=workers)
    else:
        rows, info = saved.rows, saved.info
        log.info("resuming job %s: alignment of %d rows loaded from %s", job.id, len(rows), store.directory)
    session.guard(lambda: require_min_intersection(info["size"], o))
    if progress:
        progress("psi", 1, 1, f"{info['size']} shared rows")

    def prepare() -> tuple:
        if streamed is not None:  # a large file: only the aligned rows are read, in the shared order
            aligned = streamed.aligned(data, rows, features)
        else:
            aligned = data.iloc[rows].reset_index(drop=True)
        labels = target_values(aligned[label], label, positive_label or None, o.model)
        if o.model in ("binary-lr", "multiclass-lr"):  # classifiers: stratified by the class
            train_rows, held_rows = split_rows(labels, o.test_size, o.seed)
        else:
            train_rows, held_rows = random_split(len(labels), o.test_size, o.seed)
        scaler, matrix, names = prepare_features(aligned, features, train_rows, o, intercept=True)
        return aligned, labels, train_rows, held_rows, scaler, matrix, names

    aligned, labels, train_rows, held_rows, scaler, matrix, names = session.guard(prepare)
    if o.model == "multiclass-lr":
        session.guard(lambda: lr.check_multiclass(o, len(train_rows), int(labels.max()) + 1))
    offset = np.log(exposures(aligned[o.exposure], o.exposure)) if o.exposure else None
    if saved is None and start.interrupted is None:
        send_held_out(session, job.hosts, held_rows)
        if store is not None:
            store.save_alignment(Alignment(rows, None, info))

    def on_epoch(epoch: int, batch: int, loss: float | None) -> None:
        if progress and loss is not None:
            progress("train", epoch + 1, max_rounds(len(train_rows), o), f"loss {loss:.5f}")

    trained = train_weights(
        session, o, matrix, train_rows, intercept=True,
        run=lambda train_matrix: training.run_guest(
            session, train_matrix, labels[train_rows], keypair=keypair, workers=workers, progress=on_epoch,
            interrupted=start.interrupted,
            **({} if offset is None else {"offset": offset[train_rows]}),
            **checkpointing(store, resuming=saved is not None or start.interrupted is not None),
        ),
    )  # fmt: skip
    if progress:
        progress("train", trained.epochs, trained.epochs, f"done, loss {trained.losses[-1]:.5f}")
    scoring = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, stage="train-score")
    z = session.guard(lambda: predict.joint_logit_matrix(session, scoring, matrix @ trained.weights))
    if not binary:
        return _finish_regression(
            session, job, aligned, labels, train_rows, held_rows, z, offset, scaler, names, trained, info,
            id_column=id_column, label=label, output_dir=output_dir, store=store, source=source, rows_in=len(data),
        )  # fmt: skip
    scores = sigmoid(z)

    def evaluate_locally() -> tuple:
        calibrator, evaluation = evaluate_held_out(
            labels, z, train_rows, held_rows, positive_label=positive_label, method=o.calibration
        )
        baseline = fit_baseline(matrix, labels, train_rows, held_rows, columns=names)
        return calibrator, evaluation, baseline

    calibrator, evaluation, baseline = session.guard(evaluate_locally)
    extras = {"calibrator": calibrator.to_dict(), "positive_class": positive_label}
    shard = session.guard(lambda: make_shard(session, job, "guest", names, trained.weights, scaler, extras))
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
    ledger = _end_training(
        session,
        job,
        info,
        trained,
        f"positive class: {positive_label!r} (label column '{label}')",
        output_dir,
    )
    outcome = GuestOutcome(
        shard, evaluation, table, trained.losses, trained.epochs, info["size"], ledger, positive_label,
        calibrator=calibrator, baseline=baseline, data_files=[{"name": source or "(in memory)", "rows": len(data)}],
        input_rows=np.asarray(rows),
    )  # fmt: skip
    return _save(outcome, job, output_dir, store)


def class_columns(probabilities: np.ndarray, classes: Any) -> dict[str, Any]:
    """The predicted class (``score``) and one probability column per class of a multi-class model."""
    cls = np.asarray(classes)
    out: dict[str, Any] = {"score": cls[np.argmax(probabilities, axis=1)]}
    out.update({f"p_{c}": probabilities[:, i] for i, c in enumerate(cls)})
    return out


def _finish_regression(
    session: Session,
    job: Job,
    aligned: pd.DataFrame,
    labels: np.ndarray,
    train_rows: np.ndarray,
    held_rows: np.ndarray,
    z: np.ndarray,
    offset: np.ndarray | None,
    scaler: Any,
    names: list[str],
    trained: lr.TrainedShard,
    info: dict[str, Any],
    *,
    id_column: str,
    label: str,
    output_dir: Path | None,
    store: Any,
    source: str | None,
    rows_in: int,
) -> GuestOutcome:
    """The end of a linear, poisson or multi-class job: predictions, held-out metrics, shard, outputs."""
    o = job.options
    kind = model_kind(o.model)
    exposure = None if offset is None else np.exp(offset)
    predictions = kind.link(z, exposure)
    metrics = session.guard(lambda: kind.evaluate(labels[held_rows], predictions[held_rows]))
    train_metrics = kind.evaluate(labels[train_rows], predictions[train_rows])
    classes = kind.check_labels(aligned[label].to_numpy()).classes if o.model == "multiclass-lr" else None
    metrics["train"] = {
        ("rows" if k == "held_out_rows" else k): v
        for k, v in train_metrics.items()
        if isinstance(v, int | float)
    }
    extras: dict[str, Any] = {"exposure": o.exposure} if o.exposure else {}
    if classes is not None:
        extras["classes"] = list(classes)
        metrics["classes"] = list(classes)
    shard = session.guard(lambda: make_shard(session, job, "guest", names, trained.weights, scaler, extras))
    held_out = np.zeros(len(aligned), dtype=bool)
    held_out[held_rows] = True
    if classes is None:
        columns: dict[str, Any] = {"score": predictions, "target": labels}
    else:
        columns = class_columns(predictions, classes)
        columns["target"] = np.asarray(classes)[labels.astype(int)]
    table = pd.DataFrame({id_column: aligned[id_column].to_numpy(), **columns, "held_out": held_out})
    ledger = _end_training(
        session, job, info, trained, f"model: {o.model} (label column '{label}')", output_dir
    )
    outcome = GuestOutcome(
        shard, None, table, trained.losses, trained.epochs, info["size"], ledger, "",
        data_files=[{"name": source or "(in memory)", "rows": rows_in}], model=o.model, kind_metrics=metrics,
    )  # fmt: skip
    return _save(outcome, job, output_dir, store)


def _end_training(
    session: Session, job: Job, info: dict[str, Any], trained: Any, note: str, output_dir: Path | None
) -> Ledger:
    """The end of every training job at the guest: the barrier, then the ledger with the guest's notes."""
    notes = [*training_notes(info, trained.generations), note]
    if job.scoring_reveal == "partial" or len(job.hosts) == 1:
        notes.append(
            "with a single host, the guest can derive the host's partial scores from the final scores"
        )
    return end_training(session, output_dir, notes)


def _save(outcome: GuestOutcome, job: Job, output_dir: Path | None, store: Any) -> GuestOutcome:
    """The last step of a training job at the guest: its outputs written, its resumable state dropped."""
    if output_dir is not None:
        outcome.outputs = write_guest_outputs(output_dir, outcome, job)
    if store is not None:
        store.clear()
    return outcome


def trained_options(job: Job, scores: pd.DataFrame) -> TrainOptions:
    """The options the job trained with: ``precondition = "auto"`` decided by its training rows (the
    rows of ``scores`` not held out), so the report names the optimizer and step rule that ran."""
    n_train = int((~scores["held_out"].astype(bool)).sum()) if "held_out" in scores else 0
    return job.options.at_rows(n_train)


def write_guest_outputs(directory: Path, outcome: GuestOutcome, job: Job) -> dict[str, Path]:
    """Model shard, ledger, scores, metrics, the report's data and the HTML report, each written atomically."""
    if outcome.evaluation is None:
        return _write_kind_outputs(directory, outcome, job)
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
        options=trained_options(job, outcome.scores).to_dict(),
        parties={"guest": job.guest, "hosts": list(job.hosts), "arbiter": job.members.arbiter},
        epochs=outcome.epochs,
        intersection_size=outcome.intersection_size,
    )
    written["report_data"] = data.save(directory / "report.json")
    written["report"] = write_report(directory / "report.html", data)
    return written


def _write_kind_outputs(directory: Path, outcome: GuestOutcome, job: Job) -> dict[str, Path]:
    """Outputs of a non-binary model kind: shard, ledger, scores, metrics.json and its HTML report."""
    written = write_outputs(directory, outcome.shard, outcome.ledger)
    written["scores"] = atomic_write_text(directory / "scores.csv", outcome.scores.to_csv(index=False))
    summary = {
        "model": outcome.model,
        "metrics": jsonable(outcome.kind_metrics),
        "losses": outcome.losses,
        "epochs": outcome.epochs,
        "intersection_size": outcome.intersection_size,
    }
    written["metrics"] = atomic_write_json(directory / "metrics.json", summary)
    written["report"] = atomic_write_text(
        directory / "report.html",
        kind_report_html(
            job.id, outcome.model, outcome.kind_metrics, outcome.losses, outcome.scores, outcome.ledger
        ),
    )
    return written


def score(
    session: Session,
    job: Job,
    data: pd.DataFrame,
    shard: ModelShard,
    *,
    id_column: str,
    workers: WorkerPool | None = None,
    streamed: Any = None,
) -> pd.DataFrame:
    """Score new ids with a trained model: PSI on the new ids, then joint scoring. Returns id and score."""
    exposure_column = [shard.extras["exposure"]] if shard.extras.get("exposure") else []
    needed = [id_column, *shard.scaler().input_names, *exposure_column]
    session.guard(lambda: require_columns(checked_view(data, streamed, ()), needed, what="the guest's data"))
    session.guard(lambda: session.agree(job.settings()))
    result = run_psi(session, job, data[id_column], job.psi, column=id_column, workers=workers)
    session.guard(result.require_nonempty)
    aligned = aligned_rows(result, data, streamed, needed)

    def partial() -> np.ndarray:
        matrix = shard.scaler().transform(aligned)
        if shard.has_intercept:
            matrix = np.hstack([np.ones((len(matrix), 1)), matrix])
        return matrix @ shard.weight_vector

    own = session.guard(partial)
    plan = predict.ScoringPlan(job.guest, job.hosts, job.scoring_reveal, stage="predict")
    z = session.guard(lambda: predict.joint_logit_matrix(session, plan, own))
    session.barrier("predict")
    if shard.model_kind != "binary-lr":
        column = shard.extras.get("exposure")
        exposure = exposures(aligned[column], column) if column else None
        prediction = model_kind(shard.model_kind).link(z, exposure)
        if shard.model_kind == "multiclass-lr":
            frame = class_columns(prediction, shard.extras["classes"])
            return pd.DataFrame({id_column: aligned[id_column].to_numpy(), **frame})
        return pd.DataFrame({id_column: aligned[id_column].to_numpy(), "score": prediction})
    table = pd.DataFrame({id_column: aligned[id_column].to_numpy(), "score": sigmoid(z)})
    if "calibrator" in shard.extras:
        table["probability"] = Calibrator.from_dict(shard.extras["calibrator"]).apply(z)
    # In the order of the guest's input, with its ids exactly as written there.
    return table.iloc[np.argsort(result.rows)].reset_index(drop=True)
