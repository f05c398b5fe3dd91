"""Job options shared by every party of a training job, validated once, hashed so parties can compare.

Every party applies the same options (optimizer, schedule, penalty, batch order, stopping rule) to
its own weights, so that the joint model equals centralized training on the Taylor loss. The
defaults are chosen to need no tuning on standardized, clipped data (measured on every FATE example
dataset and on synthetic heavy-tailed data): Adam at 0.2 with inverse-time decay (lr / (1 + 0.5 epoch)),
mini-batches of 512 rows, L2 of 1e-4, and early stopping once the loss moves less than 0.1 % for two
epochs in a row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from vfl.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "step", "inverse-time")
PENALTIES = ("none", "l2", "l1")
INITS = ("zeros", "random")
KEY_BITS = (1024, 2048, 3072)


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of a coordinated logistic regression job (DESIGN.md §6)."""

    max_epochs: int = 50
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
    tol: float = 1e-3  # stop when the epoch loss changes by less than tol (relative)
    patience: int = 2  # epochs in a row the loss must stay within tol before stopping
    seed: int = 42
    key_bits: int = 2048
    test_size: float = 0.2  # fraction of aligned rows held out for evaluation (stratified)
    clip_sigma: float = 5.0  # clip standardized columns at +- this many standard deviations (0 = off)
    min_rows_per_column: int = 4  # batch size must exceed this multiple of every party's column count

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"job option {message}")

        # Types first, so a wrong type is a clear error rather than a failed comparison.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "batch_size" and value is None:
                continue
            if f.type in ("int", "int | None"):
                need(
                    isinstance(value, int) and not isinstance(value, bool),
                    f"{f.name} must be an integer, got {value!r}",
                )
            elif f.type == "float":
                need(
                    isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
                    f"{f.name} must be a number, got {value!r}",
                )
            elif f.type == "str":
                need(isinstance(value, str), f"{f.name} must be a string, got {value!r}")
        if self.batch_size == 0:
            object.__setattr__(self, "batch_size", None)  # 0 means full batch (TOML has no null)

        need(
            isinstance(self.max_epochs, int) and self.max_epochs >= 1,
            f"max_epochs must be >= 1, got {self.max_epochs!r}",
        )
        need(
            self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1),
            f"batch_size must be a positive integer, or 0 for full batch, got {self.batch_size!r}",
        )
        need(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        need(
            self.schedule in SCHEDULES,
            f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        need(
            self.penalty in PENALTIES, f"penalty must be one of {', '.join(PENALTIES)}, got {self.penalty!r}"
        )
        need(self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        need(self.key_bits in KEY_BITS, f"key_bits must be one of {KEY_BITS}, got {self.key_bits!r}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate!r}")
        need(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha!r}")
        need(0 < self.test_size < 1, f"test_size must be between 0 and 1, got {self.test_size!r}")
        need(self.clip_sigma >= 0, f"clip_sigma must be >= 0 (0 turns clipping off), got {self.clip_sigma!r}")
        need(self.tol >= 0, f"tol must be >= 0, got {self.tol!r}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience!r}")
        need(self.decay_epochs >= 1, f"decay_epochs must be >= 1, got {self.decay_epochs!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainOptions:
        """Build options from a mapping (job.toml, keyword arguments); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown job option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A hash of every option: parties compare it before training and refuse to start if it differs."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Names of the options whose values differ from ``other`` (a peer's ``to_dict()``)."""
        mine = self.to_dict()
        return sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
