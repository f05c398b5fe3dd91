"""What one party brings to one job (``RoleContext``) and what its role of the job produced (``Outcome``).

Every role function of the job registry (``jobs.py``) takes the one and returns the other; a party
module whose functions have that signature is registered as it is (``screen.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vfl.crypto import PrivateKey, PublicKey, WorkerPool
from vfl.model import ModelShard
from vfl.parties.common import Job, ProgressFn
from vfl.protocols.session import Session


@dataclass
class RoleContext:
    """What one party brings to one job."""

    session: Session
    job: Job
    data: pd.DataFrame | None = None
    id_column: str = "id"
    label: str | None = None
    columns: list[str] | None = None
    positive: str | None = None
    output_dir: Path | None = None
    workers: WorkerPool | None = None
    progress: ProgressFn | None = None
    resumable: bool = False
    model: ModelShard | None = None
    keypair: tuple[PublicKey, PrivateKey] | None = None
    source: str | None = None  # the data file's name, for the report's provenance
    streamed: Any = None  # a large file: its StreamedTable (data holds the id and what is needed up front)
    segment_policy: Any = None  # segment jobs: this party's [segment] policy from party.toml
    budget: Any = None  # audience and segment jobs: the party's PrivacyBudget (None: no budget is kept)
    disable_noise_for_tests: bool = False  # audience jobs: exactness tests only; no option maps to it

    @property
    def role(self) -> str:
        return self.session.role


@dataclass
class Outcome:
    """What one party's role of a job produced."""

    outputs: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    result: Any = None


RoleFn = Callable[[RoleContext], Outcome]
