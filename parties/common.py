"""What every data party does around the protocols: pick its columns, prepare them, save its outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.analytics.budget import PrivacyBudget
from vfl.data import Preprocessor, Whitening, require_columns
from vfl.errors import ConfigError, DataError
from vfl.io import check_writable
from vfl.ledger import Ledger
from vfl.model import INTERCEPT, ModelShard
from vfl.options import ScreenOptions, TrainOptions
from vfl.parties.state import Alignment, StateStore, job_fingerprint
from vfl.protocols import lr, lr_two_key
from vfl.protocols.catalog import ALL_PROTOCOLS
from vfl.protocols.lr import LrPlan, PartyState
from vfl.protocols.lr_two_key_multiclass import run_guest as classes_guest
from vfl.protocols.lr_two_key_multiclass import run_host as classes_host
from vfl.protocols.messages import find, learned_by
from vfl.protocols.session import Generations, Members, Session
from vfl.protocols.shards import exchange_digests
from vfl.psi.options import PsiOptions
from vfl.transport.channel import Interrupted

log = logging.getLogger(__name__)

# A progress callback: (stage, done, total, note). Stages: "psi", "train", "score".
ProgressFn = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class RowLimit:
    """A serving party's rows cap for one job: at most ``rows`` shared rows (``[caps.<partner>] rows``)."""

    partner: str
    rows: int


@dataclass(frozen=True)
class Job:
    """One federated job as every party sees it: who takes part, with which options."""

    id: str
    guest: str
    hosts: tuple[str, ...]
    arbiter: str | None = None
    options: TrainOptions = field(default_factory=TrainOptions)
    psi: PsiOptions = field(default_factory=PsiOptions)
    reveal: str | None = None  # joint scoring: "sum" (default with 2+ hosts) or "partial"
    kind: str = "train"
    model: str | None = None  # predict: the training job whose model scores
    federation_digest: str = ""  # hash of the federation file, agreed before any work
    screen: ScreenOptions | None = None  # [screen] of a screening job
    segment: Any = None  # segment jobs: the [segment] options (vfl.segmentation.options.SegmentOptions)
    audience: Any = None  # audience jobs: the [audience] options (vfl.analytics.options.AudienceJobOptions)
    # Local, never agreed: the most shared rows this party's service accepted the job for (its
    # policy's [caps.<partner>] rows); the PSI stops the job if the intersection is larger.
    row_limit: RowLimit | None = None

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("a job needs at least one host")
        names = [self.guest, *self.hosts, *([self.arbiter] if self.arbiter else [])]
        if len(set(names)) != len(names):
            raise ConfigError(f"every party of a job needs its own id, got {names}")
        if self.kind == "train":
            # "topology" unset: coordinated with an arbiter, arbiter-free without (DESIGN.md §15).
            object.__setattr__(self, "options", self.options.resolved_for(self.arbiter is not None))
            o = self.options
            if o.randomizer_stream != "none" and self.topology == "arbiter-free":
                raise ConfigError(
                    'randomizer_stream = "arbiter" needs the coordinated topology (the arbiter makes the '
                    "randomizers); remove it for arbiter-free training"
                )
            if self.topology == "arbiter-free":
                lr_two_key.two_key_objective(self.options)  # ConfigError for a kind it does not train

    @property
    def topology(self) -> str:
        """How the job trains: "coordinated" (the arbiter holds the key) or "arbiter-free"."""
        return self.options.topology or ("coordinated" if self.arbiter else "arbiter-free")

    @property
    def parties(self) -> tuple[str, ...]:
        return self.members.parties

    @property
    def members(self) -> Members:
        """The parties that take part (the arbiter only in coordinated training; it stays idle otherwise)."""
        arbiter = self.arbiter if self.kind == "train" and self.topology == "coordinated" else None
        return Members(self.guest, self.hosts, arbiter)

    def settings(self) -> dict[str, Any]:
        """Everything every party must share, compared once before any work (``Session.agree``)."""
        shared: dict[str, Any] = {
            "kind": self.kind,
            "federation": self.federation_digest,
            "parties": list(self.parties),
            **{f"psi.{k}": v for k, v in self.psi.settings().items()},
        }
        if self.kind == "train":
            shared.update({f"train.{k}": v for k, v in self.options.to_dict().items()})
            if self.topology == "arbiter-free":
                shared["train.protocol"] = lr_two_key.VERSION
        if self.kind in ("train", "predict"):
            shared["predict.reveal"] = self.scoring_reveal
        if self.kind == "predict":
            shared["predict.model"] = self.model
        if self.kind == "screen":
            shared.update({f"screen.{k}": v for k, v in (self.screen or ScreenOptions()).to_dict().items()})
        if self.kind == "segment" and self.segment is not None:
            shared.update({f"segment.{k}": v for k, v in self.segment.to_dict().items()})
        if self.kind == "audience" and self.audience is not None:
            shared.update({f"audience.{k}": v for k, v in self.audience.to_dict().items()})
        return shared

    def session(self, channel: Any, *, first_contact: float | None = None) -> Session:
        extra = {} if first_contact is None else {"first_contact": first_contact}
        return Session(channel, self.members, job_id=self.id, **extra)

    @property
    def lr_plan(self) -> LrPlan:
        if self.arbiter is None:
            raise ConfigError(
                "training needs an arbiter (it holds the Paillier key); add one to the federation"
            )
        return LrPlan(self.id, self.guest, self.hosts, self.arbiter, self.options)

    @property
    def two_key_plan(self) -> lr_two_key.TwoKeyPlan:
        return lr_two_key.TwoKeyPlan(self.id, self.guest, self.hosts, self.options)

    @property
    def training_psi(self) -> PsiOptions:
        """PSI options for a training job: the shared order follows from the seed, so runs repeat."""
        if self.psi.order_key is not None:
            return self.psi
        key = hashlib.sha256(f"vfl/shared-order/v1|{self.options.seed}".encode()).digest()
        return dataclasses.replace(self.psi, order_key=key)

    @property
    def scoring_reveal(self) -> str:
        return self.reveal or ("sum" if len(self.hosts) >= 2 else "partial")


@dataclass(frozen=True)
class Trainer:
    """The training protocol of one topology: its plan, its coordinator and one function per data role.

    ``run_guest(session, features, labels, **kw)`` / ``run_host(session, features, **kw)`` take the
    protocols' keyword arguments (workers, progress, resume, on_epoch, interrupted, keypair).
    """

    plan: Any
    coordinator: str
    guest_fn: Callable[..., lr.TrainedShard]
    host_fn: Callable[..., lr.TrainedShard]
    takes_keypair: bool

    def run_guest(
        self, session: Session, features: np.ndarray, labels: np.ndarray, **kw: Any
    ) -> lr.TrainedShard:
        return self.guest_fn(session, self.plan, features, labels, **self._args(kw))

    def run_host(self, session: Session, features: np.ndarray, **kw: Any) -> lr.TrainedShard:
        return self.host_fn(session, self.plan, features, **self._args(kw))

    def _args(self, kw: dict[str, Any]) -> dict[str, Any]:
        keypair = kw.pop("keypair", None)
        return {**kw, "keypair": keypair} if self.takes_keypair else kw


def _coordinated(job: Job) -> Trainer:
    plan = job.lr_plan
    return Trainer(plan, plan.arbiter, lr.run_guest, lr.run_host, takes_keypair=False)


def _arbiter_free(job: Job) -> Trainer:
    if job.options.model == "multiclass-lr":  # packed parts per key (protocols/lr_two_key_multiclass.py)
        return Trainer(job.two_key_plan, job.guest, classes_guest, classes_host, takes_keypair=True)
    return Trainer(job.two_key_plan, job.guest, lr_two_key.run_guest, lr_two_key.run_host, takes_keypair=True)


#: The training protocol of each ``[train] topology`` (DESIGN.md §6 and §15).
TOPOLOGIES: dict[str, Callable[[Job], Trainer]] = {"coordinated": _coordinated, "arbiter-free": _arbiter_free}


def trainer(job: Job) -> Trainer:
    return TOPOLOGIES[job.topology](job)


def feature_columns(
    frame: pd.DataFrame, id_column: str, label: str | None, offered: list[str] | None
) -> list[str]:
    """The columns a party offers to the job: the configured list, or every column but the id and label."""
    if offered is not None:
        require_columns(frame, offered, what="the data")
        columns = [c for c in offered if c not in (id_column, label)]
    else:
        columns = [c for c in frame.columns if c not in (id_column, label)]
    if not columns:
        raise DataError(
            "the data has no feature columns besides the id" + (" and the label" if label else "")
        )
    return columns


def prepare_features(
    aligned: pd.DataFrame,
    columns: list[str],
    train_rows: np.ndarray,
    options: TrainOptions,
    *,
    intercept: bool,
) -> tuple[Preprocessor, np.ndarray, list[str]]:
    """Fit this party's scaler on its training rows; return it, the model matrix of every aligned row, and names."""
    scaler = Preprocessor.fit(aligned.iloc[train_rows][columns], clip_sigma=options.clip_sigma)
    if scaler.imputed:
        log.info("imputed missing values with column medians: %s", scaler.imputed)
    matrix = scaler.transform(aligned[columns])
    names = scaler.output_names
    if intercept:
        matrix = np.hstack([np.ones((len(matrix), 1)), matrix])
        names = [INTERCEPT, *names]
    return scaler, matrix, names


def precondition_features(
    matrix: np.ndarray, train_rows: np.ndarray, options: TrainOptions, *, intercept: bool
) -> tuple[np.ndarray, Whitening]:
    """The training matrix the protocol sees and how to map its weights back to this party's columns.

    With ``precondition = "whiten"`` (``"auto"``, the default, on large data) the party whitens its own columns on its own
    training rows (``Whitening``, a block-Jacobi preconditioner of the joint Taylor loss): local,
    no communication, nothing new sent. The saved model, its reports and scoring use
    ``whitening.to_original(weights)`` on the unwhitened ``matrix``.
    """
    skip = 1 if intercept else 0
    options = options.at_rows(len(train_rows))  # precondition = "auto": decided by the training rows
    if options.precondition == "none":
        return matrix[train_rows], Whitening(np.eye(matrix.shape[1]))
    whitening = Whitening.fit(matrix[train_rows], skip=skip)
    return whitening.apply(matrix[train_rows]), whitening


@dataclass
class Start:
    """How this party enters a training job: afresh, from its saved alignment, or into a resync."""

    saved: Alignment | None
    interrupted: Interrupted | None = None


def begin(session: Session, job: Job, store: StateStore | None, *, coordinator: str) -> Start:
    """Agree on the job with every party; decide whether this party resumes from its saved state.

    A party with saved state also asks the coordinator to resynchronize: if the others are still
    training, the coordinator answers with a ``resync`` notice, which interrupts the agreement and
    is handed to the protocol. If they are all starting, the agreement decides: all resume or all
    start afresh (``decide_resume``), and a party whose state is not used drops it.
    """
    saved = store.load_alignment() if store is not None else None
    if store is not None:
        store.attach_log(session.channel.log)  # a restarted party's ledger covers every process of the job
    summary = {"aligned": len(saved.rows), "checkpoints": len(store.checkpoints())} if saved else None
    try:
        agreement = session.guard(
            lambda: session.agree(job.settings(), state=summary, rejoin_to=coordinator if saved else None)
        )
    except Interrupted as exc:
        if exc.notice.kind != "resync":
            raise
        if saved is not None:
            assert store is not None
            store.restore_log()
        if saved is None:
            # The others resume from saved state and this party has none: say so, so that the
            # coordinator refuses the resumption for everyone with one clear message.
            Generations(
                session, coordinator, digest=job.options.digest(), n_rows=0, on_resume=lambda g: None
            ).answer(exc, [])
        return Start(saved, exc)
    if saved is not None and not agreement.resume:
        assert store is not None
        store.clear()
        saved = None
    if saved is not None:
        assert store is not None
        store.restore_log()
    return Start(saved)


def start_training(
    session: Session, job: Job, ids: pd.Series, output_dir: Path | None, *, resumable: bool, coordinator: str
) -> tuple[StateStore | None, Start]:
    """Open this party's resumable state (with ``resumable``) and agree on the job. A coordinator with
    saved epochs of its own skips the agreement: it resynchronizes the others at once (DESIGN.md §12, §15)."""
    store = open_store(output_dir, job, ids) if resumable else None
    own = store.load_alignment() if store is not None and coordinator == session.party else None
    if own is not None and store is not None and store.checkpoints():
        return store, Start(own)
    return store, begin(session, job, store, coordinator=coordinator)


def end_training(session: Session, output_dir: Path | None, notes: list[str]) -> Ledger:
    """The end of a training job at a data party: its output folder made, the done-barrier, its ledger."""
    if output_dir is not None:
        session.guard(lambda: output_dir.mkdir(parents=True, exist_ok=True))
    session.barrier("train")
    return ledger_for(session, notes)


def open_store(output_dir: Path | None, job: Job, ids: pd.Series | None) -> StateStore | None:
    """This party's resumable state for the job (None when nothing is written to disk)."""
    if output_dir is None:
        return None
    return StateStore(output_dir / "state", job_fingerprint(job.id, job.options.digest(), ids))


def checkpointing(store: StateStore | None, resuming: bool) -> dict[str, Any]:
    """The ``resume`` / ``on_epoch`` arguments of a data party's training role for this store."""
    return {
        "resume": [PartyState.from_dict(c) for c in store.checkpoints()]
        if store is not None and resuming
        else None,
        "on_epoch": (lambda state: store.save_checkpoint(state.to_dict())) if store is not None else None,
    }


def train_weights(
    session: Session,
    options: TrainOptions,
    matrix: np.ndarray,
    train_rows: np.ndarray,
    *,
    intercept: bool,
    run: Callable[[np.ndarray], Any],
) -> Any:
    """Run a party's training role on its preconditioned training rows (``run``); the trained shard's
    weights come back on the party's standardized columns, whatever the preconditioning."""
    train_matrix, whitening = session.guard(
        lambda: precondition_features(matrix, train_rows, options, intercept=intercept)
    )
    trained = session.guard(lambda: run(train_matrix))
    return dataclasses.replace(trained, weights=whitening.to_original(trained.weights))


def make_shard(
    session: Session,
    job: Job,
    role: str,
    names: list[str],
    weights: np.ndarray,
    scaler: Preprocessor,
    extras: dict[str, Any] | None = None,
) -> ModelShard:
    """This party's model shard, tied to the other data parties' shards by their digests."""
    shard = ModelShard(
        job_id=job.id,
        party=session.party,
        role=role,
        columns=names,
        weights=weights.tolist(),
        preprocessor=scaler.to_dict(),
        options=job.options.to_dict(),
        model_kind=job.options.model,
        extras=dict(extras or {}),
    )
    shard.peer_digests = exchange_digests(session, shard.digest())
    return shard


def training_notes(info: dict[str, Any], generations: int) -> list[str]:
    """Ledger notes every data party writes about a training job."""
    notes = [f"intersection size {info['size']}; set sizes {info['set_sizes']}"]
    if generations > 1:
        notes.append(f"training was resynchronized {generations - 1} time(s) after a party restarted")
    return notes


def write_outputs(directory: Path | None, shard: ModelShard | None, ledger: Ledger) -> dict[str, Path]:
    """Save the model shard and the ledger atomically; return what was written."""
    if directory is None:
        return {}
    check_writable(directory)
    written = {}
    if shard is not None:
        written["model"] = shard.save(directory / "model.json")
    written["ledger"] = ledger.save(directory / "ledger.json")
    return written


def ledger_for(session: Session, notes: list[str] | None = None, status: str = "completed") -> Ledger:
    """This party's leakage ledger, derived from the protocols the job ran and every message it exchanged.

    The protocols are those the session ran plus those of any message in the log (a restarted party's
    log starts with its earlier processes' messages, e.g. the PSI it no longer runs).
    """
    ran = list(session.protocols)
    received = set()
    for record in session.channel.log.records:
        found = find([*ran, *ALL_PROTOCOLS], record.tag)
        if found is None:
            continue
        if found[0] not in ran:
            ran.append(found[0])
        if record.direction == "received":
            received.add(found[1].name)
    learns, never = learned_by(ran, session.role, received)

    def name(tag: str) -> str:
        found = find(ran, tag)
        return found[1].name if found else "transport"

    return Ledger.from_log(
        job_id=session.job_id,
        party=session.party,
        role=session.role,
        log=session.channel.log,
        learns=learns,
        never=never,
        notes=notes,
        protocols=[p.name for p in ran],
        name=name,
        status=status,
    )


def open_budget(workspace: Path, caps: dict[str, Any] | None = None) -> PrivacyBudget:
    """The party's privacy budget ledger, ``<workspace>/budget.sqlite`` (one for every kind of job that spends it)."""
    return PrivacyBudget(Path(workspace) / "budget.sqlite", caps)
