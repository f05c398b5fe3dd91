"""A party's segment model (``segment_model.json``, model kind ``segment``): what assigns new customers.

Each party keeps its own standardizer and local centroids; the guest also keeps the cell -> segment
lookup table. A new shared customer's segment needs every party's local cluster of that customer, so
scoring runs the same cross-party assignment step as membership release (``protocols/segment.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.errors import ConfigError, DataError
from vfl.segmentation.joint import CLIP_SIGMA
from vfl.segmentation.local import as_matrix, nearest

MODEL_FILE = "segment_model.json"
CLIP = CLIP_SIGMA


@dataclass(frozen=True)
class SegmentModel:
    job_id: str
    party: str
    role: str
    parties: tuple[str, ...]
    columns: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    centroids: np.ndarray  # (k_p, d_p) standardized units
    lookup: np.ndarray | None  # guest: final segment of every cell (shape k_g x k_h ...), -1 withheld
    options: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> SegmentModel:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"segment model {path} does not exist; run the segment job first") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"segment model {path} is unreadable: {exc}") from None
        if raw.get("kind") != "segment":
            raise ConfigError(f"{path} is not a segment model (kind {raw.get('kind')!r})")
        lookup = None
        if "lookup" in raw:
            lookup = np.asarray(raw["lookup"]["segments"], dtype=np.int64).reshape(raw["lookup"]["shape"])
        return cls(
            raw["job_id"], raw["party"], raw["role"], tuple(raw["parties"]), tuple(raw["columns"]),
            np.asarray(raw["scaler"]["mean"], dtype=float), np.asarray(raw["scaler"]["std"], dtype=float),
            np.asarray(raw["centroids"], dtype=float), lookup, dict(raw.get("options", {})),
        )  # fmt: skip

    @property
    def n_segments(self) -> int:
        return 0 if self.lookup is None else int(self.lookup.max()) + 1

    def local_clusters(self, frame: pd.DataFrame) -> np.ndarray:
        """The nearest local centroid of every row (the party's own step; nothing leaves the party)."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"the data scored with segment model '{self.job_id}' lacks the column(s) {missing}"
            )
        matrix, _ = as_matrix(frame[list(self.columns)], party=self.party)
        x = np.clip((matrix - self.mean) / self.std, -CLIP, CLIP)
        return nearest(x, self.centroids)
