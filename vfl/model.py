"""A federated model is a set of shards: each party saves only its own weights and scaler."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vfl.data import Preprocessor
from vfl.errors import DataError
from vfl.io import atomic_write_json

SHARD_FORMAT = "vfl-shard/1"
INTERCEPT = "(intercept)"


@dataclass
class ModelShard:
    """One party's part of a trained model, plus the metadata that ties the shards together."""

    job_id: str
    party: str
    role: str
    columns: list[
        str
    ]  # model columns this party owns, in weight order (the guest's start with the intercept)
    weights: list[float]
    preprocessor: dict[str, Any]
    options: dict[str, Any]
    peer_digests: dict[str, str] = field(default_factory=dict)  # the other shards' digests
    format: str = SHARD_FORMAT
    # What the weights are a model of (a registry in vfl.parties.jobs knows how to score each kind).
    model_kind: str = "binary-lr"
    # Kind-specific parts a party keeps for itself (e.g. the guest's calibrator), JSON-able.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_vector(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=float)

    @property
    def has_intercept(self) -> bool:
        return bool(self.columns) and self.columns[0] == INTERCEPT

    def scaler(self) -> Preprocessor:
        return Preprocessor.from_dict(self.preprocessor)

    def digest(self) -> str:
        """A hash of what this party's scores depend on; the other parties record it to detect a swapped shard."""
        parts: list[Any] = [self.job_id, self.party, self.columns, self.weights, self.preprocessor]
        if self.model_kind != "binary-lr" or self.extras:
            parts += [self.model_kind, self.extras]
        blob = json.dumps(parts, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def save(self, path: str | Path) -> Path:
        if not np.all(np.isfinite(self.weight_vector)):
            raise DataError(
                f"the model of party '{self.party}' has non-finite weights (training diverged); nothing was saved: "
                "lower learning_rate or check the data for extreme values"
            )
        return atomic_write_json(path, {**asdict(self), "digest": self.digest()})

    @classmethod
    def load(cls, path: str | Path) -> ModelShard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DataError(
                f"model shard {path} does not exist; train a model first or check the path"
            ) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"model shard {path} is damaged (not valid JSON): {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
            raise DataError(f"{path} is not a vfl model shard (expected format {SHARD_FORMAT})")
        digest = data.pop("digest", None)
        try:
            shard = cls(**data)
        except TypeError as exc:
            raise DataError(f"model shard {path} is damaged: {exc}") from exc
        if digest != shard.digest():
            raise DataError(f"model shard {path} was modified after it was saved (digest mismatch)")
        return shard
