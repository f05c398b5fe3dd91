"""What both coordinated LR protocols share (protocols/lr.py, protocols/lr_two_key.py): the plan, the
states kept at epoch boundaries for a resume, what training leaves at each party, and the local
batch-size check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl.errors import ConfigError
from vfl.options import TrainOptions
from vfl.protocols.objectives import Objective, objective_for

KEEP_STATES = 3  # epoch boundaries a party keeps, so it can roll back to where the slowest party is


Progress = Callable[[int, int, float | None], None]  # (epoch, batches done in epoch, loss or None)


@dataclass(frozen=True)
class LrPlan:
    """The parties of one training job and its shared options."""

    job_id: str
    guest: str
    hosts: tuple[str, ...]
    arbiter: str
    options: TrainOptions

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("training needs at least one host")
        if self.options.model != "multiclass-lr":  # multi-class has its own batch loop (below)
            self.objective.check_plan(len(self.hosts))

    @property
    def objective(self) -> Objective:
        """The steps of the batch loop that differ per model kind (protocols/objectives.py)."""
        return objective_for(self.options).for_hosts(len(self.hosts))

    @property
    def data_parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts)


@dataclass
class PartyState:
    """A data party's training state after ``epoch`` completed epochs: enough to resume from there."""

    epoch: int
    weights: np.ndarray
    optimizer: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "weights": self.weights.tolist(),
            "optimizer": self.optimizer,
            "losses": self.losses,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartyState:
        return cls(
            int(data["epoch"]),
            np.asarray(data["weights"], dtype=float),
            dict(data["optimizer"]),
            [float(x) for x in data["losses"]],
            bool(data["stopped"]),
        )


@dataclass
class ArbiterState:
    """The arbiter's state after ``epoch`` completed epochs: the loss history and the generation."""

    epoch: int
    losses: list[float]
    generation: int
    n_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "losses": self.losses,
            "generation": self.generation,
            "n_rows": self.n_rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArbiterState:
        return cls(
            int(data["epoch"]),
            [float(x) for x in data["losses"]],
            int(data["generation"]),
            int(data["n_rows"]),
        )


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
