"""What both LR protocols share (protocols/lr.py, protocols/lr_two_key.py): the plans, the states
kept at epoch boundaries for a resume, a data party's steps through one round (optimizer, schedule,
iterate averaging), what training leaves at each party, and the local batch-size check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import numpy as np

from vfl.errors import ConfigError
from vfl.optim import IterateAverage, ShardOptimizer, epoch_batches, passes
from vfl.options import TrainOptions
from vfl.protocols.objectives import Objective, objective_for
from vfl.transport.channel import Interrupted

if TYPE_CHECKING:
    from vfl.crypto import WorkerPool
    from vfl.protocols.session import Session

KEEP_STATES = 3  # epoch boundaries a party keeps, so it can roll back to where the slowest party is


Progress = Callable[[int, int, float | None], None]  # (epoch, batches done in epoch, loss or None)
State = TypeVar("State")


class RoleContext(TypedDict, total=False):
    """The keyword arguments of every data role: the worker pool, progress reports, the states to
    resume from, the per-epoch callback and a pending resynchronization notice."""

    workers: WorkerPool | None
    progress: Progress | None
    resume: list[PartyState] | None
    on_epoch: Callable[[PartyState], None] | None
    interrupted: Interrupted | None


@dataclass(frozen=True)
class Parties:
    """The data parties of one training job (the arbiter, if any, is the subclass's)."""

    job_id: str
    guest: str
    hosts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("training needs at least one host")

    @property
    def data_parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts)


@dataclass(frozen=True)
class LrPlan(Parties):
    """The parties of one coordinated training job and its shared options."""

    arbiter: str
    options: TrainOptions

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.options.model != "multiclass-lr":  # multi-class has its own batch loop (below)
            self.objective.check_plan(len(self.hosts))

    @property
    def objective(self) -> Objective:
        """The steps of the batch loop that differ per model kind (protocols/objectives.py)."""
        return objective_for(self.options).for_hosts(len(self.hosts))


@dataclass
class PartyState:
    """A data party's training state after ``epoch`` completed epochs: enough to resume from there."""

    epoch: int
    weights: np.ndarray
    optimizer: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "weights": self.weights.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartyState:
        weights, losses = np.asarray(data["weights"], dtype=float), [float(x) for x in data["losses"]]
        return cls(int(data["epoch"]), weights, dict(data["optimizer"]), losses, bool(data["stopped"]))


@dataclass
class ArbiterState:
    """The arbiter's state after ``epoch`` completed epochs: the loss history and the generation."""

    epoch: int
    losses: list[float]
    generation: int
    n_rows: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArbiterState:
        losses = [float(x) for x in data["losses"]]
        return cls(int(data["epoch"]), losses, int(data["generation"]), int(data["n_rows"]))


@dataclass
class TrainedShard:
    """What training leaves at a data party: its own weights and how training went."""

    weights: np.ndarray
    epochs: int
    losses: list[float] = field(default_factory=list)  # known at the guest (and the arbiter) only
    stopped_early: bool = False
    generations: int = 1


@dataclass
class ArbiterSummary:
    """What the arbiter learned: the loss per epoch, and nothing per row."""

    losses: list[float]
    epochs: int
    stopped_early: bool
    public_key_fingerprint: str
    generations: int = 1


def batch_size_problem(options: TrainOptions, n_rows: int, n_columns: int, party: str) -> str | None:
    """Why this party cannot train on batches of the job's size, or None (checked locally, never sent).

    A party that sees its gradient ``X_B^T d`` on a batch of not many more rows than it has columns
    could solve for the residuals ``d`` and so for the labels.
    """
    need = options.min_rows_per_column * n_columns
    if n_rows <= need:
        return (
            f"party '{party}' offers {n_columns} columns but only {n_rows} rows are aligned for training; a batch "
            f"must exceed {need} rows ({options.min_rows_per_column} per column): align more rows or offer fewer columns"
        )
    batch = min(options.batch_size or n_rows, n_rows)
    if batch <= need:
        return (
            f"batch_size {options.batch_size} is too small for party '{party}' with {n_columns} columns: a party "
            f"that sees its gradient on so few rows could solve for the residuals; use a batch size above {need} "
            f"(or 0 for full batches of {n_rows} rows)"
        )
    return None


def keep_state(
    states: dict[int, PartyState], state: PartyState, on_epoch: Callable[[PartyState], None] | None
) -> None:
    """Keep ``state`` and the last ``KEEP_STATES`` epoch boundaries before it; tell ``on_epoch``."""
    states[state.epoch] = state
    for old in sorted(states)[:-KEEP_STATES]:
        del states[old]
    if on_epoch is not None:
        on_epoch(state)


class RoundSteps:
    """A data party's steps through round ``state.epoch``, the same in both topologies: the round's
    batches, its optimizer on its own weights (the schedule runs on passes over the rows, so with
    ``loss_checks`` rounds per pass a round is a share of a pass) and the round's iterate average."""

    def __init__(self, options: TrainOptions, state: PartyState, n_rows: int, intercept_index: int | None):
        options = options.at_rows(n_rows)  # precondition = "auto" picks the step rule by the rows
        self.options, self.epoch = options, state.epoch
        self.optimizer = ShardOptimizer(options, len(state.weights), intercept_index)
        self.optimizer.load_state(state.optimizer)
        self.weights = state.weights
        self.average = IterateAverage()
        self.batches = epoch_batches(n_rows, options, state.epoch)
        self.position = passes(n_rows, options, state.epoch)

    @property
    def rows(self) -> int:
        """The round's rows (a share of the pass with ``loss_checks > 1``)."""
        return sum(len(r) for r in self.batches)

    def step(self, gradient: np.ndarray) -> np.ndarray:
        """Step on one batch's mean gradient; returns the new weights."""
        self.weights = self.optimizer.update(self.weights, gradient, self.position)
        self.average.add(self.weights)
        return self.weights

    def end(self, losses: list[float] | None = None, stopped: bool = False) -> PartyState:
        """The state after the round: the round's weights (averaged, if the job averages)."""
        weights = self.average.result(self.weights, self.options)
        return PartyState(self.epoch + 1, weights, self.optimizer.state(), losses or [], stopped)


def role_arguments(context: RoleContext) -> dict[str, Any]:
    """Every keyword argument of a data role, None where ``context`` leaves it out."""
    return {key: context.get(key) for key in RoleContext.__optional_keys__}


def coordinate(
    session: Session,
    state: State,
    step: Callable[[State], State],
    finished: Callable[[State], bool],
    *,
    peers: tuple[str, ...],
    done: Callable[[], str],
    resync: Callable[[], State],
) -> State:
    """The coordinator's loop (the arbiter, or the arbiter-free guest): rounds until ``finished``, then
    stay until every peer reports it has the final decision (tag ``done()``); a peer's rejoin starts a
    new generation from ``resync()``."""
    while True:
        try:
            while not finished(state):
                state = step(state)
            for peer in peers:
                session.await_done(done(), peer)
            return state
        except Interrupted as exc:
            if exc.notice.kind != "rejoin":
                raise
            state = resync()
