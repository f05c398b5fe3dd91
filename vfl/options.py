"""Job options shared by every party of a training job, validated once, hashed so parties can compare.

Every party applies the same options (optimizer, schedule, penalty, batch order, stopping rule) to
its own weights, so that the joint model equals centralized training on the Taylor loss. The
defaults are chosen to need no tuning on standardized, clipped data and to reach the best model in
few encrypted passes over the rows without losing AUC on any binary FATE example dataset or on
synthetic heavy-tailed data (benchmarks/bench_converge.py --sweep): mini-batches of 512 rows, L2 of
1e-4, the weights averaged over each round, the loss checked twice per pass (``loss_checks``), and
``precondition = "auto"``, which picks the step rule by the number of training rows (every party knows
it, so all pick the same; the digest covers the rule's name): on fewer than ``LARGE_DATA_ROWS``
(10,000), Adam at 0.2 with inverse-time decay (lr / (1 + 0.5 passes)) and early stopping once the loss
moves less than 0.2 % for two checks in a row; on more, ``LARGE_DATA``: each party whitens its own
columns (Ledoit-Wolf-shrunk, local, nothing sent), SGD at 2.0 with decay 0.25, and stopping after one
check within 0.2 % (default_credit: 1.5 passes instead of 2.5, the same AUC). Whitening from few rows
per column costs AUC (ionosphere, breast), hence the threshold. ``FAST_CONVERGENCE`` applies the
large-data profile on any number of rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from vfl.constraints import (
    Boolean,
    ConstraintList,
    FolderName,
    Interval,
    Options,
    OptionsTable,
    Sentinel,
    String,
)
from vfl.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "step", "inverse-time")
PENALTIES = ("none", "l2", "l1")
INITS = ("zeros", "random")
KEY_BITS = (1024, 2048, 3072)
PREDICT_REVEALS = ("sum", "partial")
PRECONDITIONS = ("auto", "whiten", "none")
AVERAGINGS = ("round", "none")
RANDOMIZER_STREAMS = ("arbiter", "none")
CALIBRATIONS = ("platt", "isotonic", "none")
TOPOLOGIES = ("coordinated", "arbiter-free")
#: What a training job fits (vfl/models/kinds.py holds each kind's math; DESIGN.md §16).
MODEL_KINDS = ("binary-lr", "multiclass-lr", "linear", "poisson")

_POSITIVE_INT = Interval(int, 1, None, closed="left")
_FRACTION = Interval(float, 0, 1, closed="left")  # a decay rate of a moving average: 1 would never forget


MIN_INTERSECTION_FLOOR = 10  # the documented floor of min_intersection (DESIGN.md §6)

#: ``precondition = "auto"`` (the default) trains a binary-lr job on at least this many training rows
#: with ``LARGE_DATA``, on fewer without preconditioning (every party knows the number of aligned
#: training rows, so every party decides the same; DESIGN.md §6).
LARGE_DATA_ROWS = 10000
#: The large-data profile (benchmarks/bench_converge.py --sweep: 1.5 passes on default_credit against
#: 2.5 with the small-data defaults, the same or better AUC on default_credit and heavy-tailed data):
#: each party whitens its own columns, and a whitened block takes near-Newton SGD steps. It replaces
#: only the options left at their defaults (an explicitly chosen optimizer or tol is kept). On small
#: data whitening costs AUC (ionosphere -0.013, breast -0.0007), hence the row threshold.
LARGE_DATA: dict[str, Any] = {
    "precondition": "whiten",
    "optimizer": "sgd",
    "learning_rate": 2.0,
    "decay": 0.25,
    "tol": 2e-3,
    "patience": 1,
}
#: ``LARGE_DATA`` on any number of rows (opt-in; benchmarks/bench_converge.py's ``fast`` config).
FAST_CONVERGENCE: dict[str, Any] = {**LARGE_DATA, "loss_checks": 2, "averaging": "round"}


@dataclass(frozen=True)
class TrainOptions(OptionsTable):
    """Hyper-parameters of a coordinated logistic regression job (DESIGN.md §6)."""

    max_epochs: int = 50  # passes over the training rows
    batch_size: int | None = 512  # None or 0 = full batch
    optimizer: str = "adam"
    learning_rate: float = 0.2
    schedule: str = "inverse-time"
    decay: float = 0.5  # step: multiply by decay every decay_epochs; inverse-time: lr / (1 + decay * epoch)
    decay_epochs: int = 10
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    penalty: str = "l2"
    alpha: float = 1e-4
    init: str = "zeros"
    tol: float = 2e-3  # stop when the round's loss changes by less than tol (relative)
    patience: int = 2  # rounds in a row the loss must stay within tol before stopping
    seed: int = 42
    key_bits: int = 2048
    test_size: float = 0.2  # fraction of aligned rows held out for evaluation (stratified)
    clip_sigma: float = 5.0  # clip standardized columns at +- this many standard deviations (0 = off)
    min_rows_per_column: int = 4  # batch size must exceed this multiple of every party's column count
    # Fewest aligned rows a training job accepts, checked before any label- or feature-derived step:
    # tiny intersections make every aggregate close to a per-customer value.
    min_intersection: int = 100
    # How the guest turns the Taylor model's logits into probabilities (fitted locally on training rows).
    calibration: str = "platt"
    # "coordinated" (an arbiter holds the key, DESIGN.md §6) or "arbiter-free" (every data party its own
    # key, §15); None: coordinated when the federation has an arbiter, else arbiter-free (resolved_for).
    topology: str | None = None
    # The model: "binary-lr" (DESIGN.md §6), "linear" or "poisson" regression (DESIGN.md §16).
    model: str = "binary-lr"
    # Poisson only: the guest's column of exposures (time at risk); enters as log(exposure).
    exposure: str | None = None
    # Local block-Jacobi preconditioning: each party whitens its own columns on its training rows
    # (Ledoit-Wolf-shrunk second moments); its weights are mapped back to its columns for the model.
    # "auto": LARGE_DATA on at least LARGE_DATA_ROWS training rows of a binary-lr job, else "none".
    precondition: str = "auto"
    # Rounds per pass over the rows: the arbiter checks the loss (and parties checkpoint) after each
    # (fewer on small data: every round has at least vfl.optim.MIN_ROUND_ROWS rows).
    loss_checks: int = 2
    # "round": each party continues from (and keeps) the mean of its weights over the round's batches.
    averaging: str = "round"
    # "arbiter": the key owner streams DJN randomizers (CRT, ~1.8x cheaper) to each data party. Off by
    # default: on 2 shared cores the arbiter's work competes with the data parties' (measured slower
    # once, 7-24 % faster in a later run at load 10-20; DESIGN.md §6); for an arbiter on its own machine.
    randomizer_stream: str = "none"

    _option_label: ClassVar[str] = "job option"
    #: Every option's allowed values: types, ranges and choices (vfl/constraints.py).
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {
        "max_epochs": [_POSITIVE_INT],
        "batch_size": [_POSITIVE_INT, Sentinel(0, None, "full batch"), None],
        "optimizer": [Options(str, OPTIMIZERS)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "schedule": [Options(str, SCHEDULES)],
        "decay": [Interval(float, 0, None, closed="left")],
        "decay_epochs": [_POSITIVE_INT],
        "momentum": [_FRACTION],
        "beta1": [_FRACTION],
        "beta2": [_FRACTION],
        "penalty": [Options(str, PENALTIES)],
        "alpha": [Interval(float, 0, None, closed="left")],
        "init": [Options(str, INITS)],
        "tol": [Interval(float, 0, None, closed="left")],
        "patience": [_POSITIVE_INT],
        "seed": [Interval(int, 0, None, closed="left")],
        "key_bits": [Options(int, KEY_BITS)],
        "test_size": [Interval(float, 0, 1, closed="neither")],
        "clip_sigma": [Interval(float, 0, None, closed="left", note="0 turns clipping off")],
        "min_rows_per_column": [Interval(int, 0, None, closed="left")],
        "min_intersection": [Interval(int, MIN_INTERSECTION_FLOOR, None, closed="left")],
        "calibration": [Options(str, CALIBRATIONS)],
        "topology": [Options(str, TOPOLOGIES), None],
        "model": [Options(str, MODEL_KINDS)],
        "exposure": [String(1, note="the guest's exposure column"), None],
        "precondition": [Options(str, PRECONDITIONS)],
        "loss_checks": [_POSITIVE_INT],
        "averaging": [Options(str, AVERAGINGS)],
        "randomizer_stream": [Options(str, RANDOMIZER_STREAMS)],
    }

    def _cross_field_rules(self) -> None:
        if self.exposure is not None and self.model != "poisson":
            raise ConfigError(
                f'job option exposure is only for model = "poisson" (the model is {self.model!r}); remove it'
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainOptions:
        """Build options from a mapping (job.toml, keyword arguments); unknown keys are an error."""
        return super().from_dict(values)

    def digest(self) -> str:
        """A hash of every option: parties compare it before training and refuse to start if it differs."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def resolved_for(self, has_arbiter: bool) -> TrainOptions:
        """These options with ``topology`` decided for a federation with or without an arbiter."""
        if self.topology is None:
            return dataclasses.replace(self, topology="coordinated" if has_arbiter else "arbiter-free")
        if self.topology == "coordinated" and not has_arbiter:
            raise ConfigError(
                'training with topology = "coordinated" needs an arbiter (it holds the Paillier key); add one '
                'to the federation, or set topology = "arbiter-free" in [train]'
            )
        return self

    def at_rows(self, n_rows: int) -> TrainOptions:
        """The options a job on ``n_rows`` training rows trains with: ``precondition = "auto"`` decided.

        Every party (and the arbiter, from ``lr.setup``) knows ``n_rows``, so all decide the same."""
        if self.precondition != "auto":
            return self
        if self.model != "binary-lr" or n_rows < LARGE_DATA_ROWS:
            return dataclasses.replace(self, precondition="none")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        chosen = {
            k: v for k, v in LARGE_DATA.items() if k == "precondition" or getattr(self, k) == defaults[k]
        }
        return dataclasses.replace(self, **chosen)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Names of the options whose values differ from ``other`` (a peer's ``to_dict()``)."""
        mine = self.to_dict()
        return sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))


@dataclass(frozen=True)
class PredictOptions(OptionsTable):
    """The ``[predict]`` section of a scoring job (DESIGN.md §7).

    ``model`` is the id of the training job whose shards score the new ids (required). ``reveal``:
    ``"sum"`` (the guest learns only the sum of the hosts' partial scores; default with two or more
    hosts), ``"partial"`` (each host's partial score; default with one host), or None for the default.
    """

    model: str
    reveal: str | None = None

    _option_label: ClassVar[str] = "predict option"
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {
        "model": [FolderName(note="the id of the training job")],
        "reveal": [Options(str, PREDICT_REVEALS), None],
    }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PredictOptions:
        return super().from_dict(values)


SCREEN_METHODS = ("quantile", "monotone")
MIN_BIN_SIZE_FLOOR = 5  # the documented floor of [screen] min_bin_size (DESIGN.md §17)


@dataclass(frozen=True)
class ScreenOptions(OptionsTable):
    """The ``[screen]`` section of a feature-screening job (WOE / IV across parties, DESIGN.md §17).

    ``bins`` quantile bins per column (``method = "monotone"`` then merges adjacent bins until WOE is
    monotone); every bin describes at least ``min_bin_size`` customers or none (smaller ones are
    merged before anything leaves the party that owns the column; the floor is 5). ``share_iv``
    sends each host the IV of its own columns at the end. ``key_bits``: the guest's Paillier key.
    """

    bins: int = 10
    method: str = "quantile"
    min_bin_size: int = 20
    share_iv: bool = False
    guest_columns: bool = True  # screen the guest's own columns too (in plaintext, locally)
    key_bits: int = 2048
    min_intersection: int = 100

    _option_label: ClassVar[str] = "screen option"
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {
        "bins": [Interval(int, 2, 100, closed="both")],
        "method": [Options(str, SCREEN_METHODS)],
        "min_bin_size": [
            Interval(int, MIN_BIN_SIZE_FLOOR, None, closed="left", note="no bin may describe fewer customers")
        ],
        "share_iv": [Boolean()],
        "guest_columns": [Boolean()],
        "key_bits": [Options(int, KEY_BITS)],
        "min_intersection": [Interval(int, MIN_INTERSECTION_FLOOR, None, closed="left")],
    }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScreenOptions:
        return super().from_dict(values)
