"""PSI job options and the result each party gets back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from vfl.constraints import (
    Boolean,
    Bytes,
    ConstraintList,
    InstanceOf,
    Interval,
    Options,
    OptionsTable,
    String,
    check_keys,
    check_table,
)
from vfl.errors import DataError
from vfl.psi.ecdh import DEFAULT_CHUNK_SIZE, DEFAULT_PARALLEL_THRESHOLD
from vfl.psi.ids import DEDUPE_MODES, Normalization

REVEAL_MODES = ("all", "guest-only")
_NORMALIZATION_KEYS = ("strip", "casefold", "nfkc")
#: The normalization flags, given flat in ``[psi]`` or in a ``normalization`` table.
NORMALIZATION_CONSTRAINTS: dict[str, ConstraintList] = {name: [Boolean()] for name in _NORMALIZATION_KEYS}


@dataclass(frozen=True)
class PsiOptions(OptionsTable):
    """Options of one PSI run.

    Must agree between parties (checked before any point is sent): ``normalization``, ``reveal``,
    and ``salt`` when a host sets one. Local to each party: ``dedupe``, ``workers``,
    ``chunk_size``, ``parallel_threshold``, ``message_rows``, ``timeout``.

    - ``reveal="all"``: every party learns its rows of the intersection and their shared order;
      ``"guest-only"``: hosts learn only the intersection size (overlap analysis).
    - ``salt``: the job salt; by default the guest draws 32 random bytes and sends them.
    - ``tag``: prefix of every message tag, so several PSI runs in one job (training, then
      prediction on new ids) do not collide.
    - ``order_key``: the guest sorts the intersection by a keyed hash of the normalized ids, so the
      same job on the same data gets the same shared order (and so the same batches and model);
      the order is a function of the intersection alone, so it tells no party anything new.
      ``None`` draws a fresh random order.
    """

    normalization: Normalization = field(default_factory=Normalization)
    dedupe: Literal["error", "first"] = "error"
    reveal: Literal["all", "guest-only"] = "all"
    salt: bytes | None = None
    tag: str = "psi"
    workers: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    parallel_threshold: int = DEFAULT_PARALLEL_THRESHOLD
    message_rows: int = 1 << 20
    timeout: float | None = None
    order_key: bytes | None = None

    _option_label: ClassVar[str] = "PSI option"
    #: Every option's allowed values: types, ranges and choices (vfl/constraints.py).
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {
        "normalization": [InstanceOf(Normalization, "a Normalization (or strip/casefold/nfkc flags)")],
        "dedupe": [Options(str, DEDUPE_MODES)],
        "reveal": [Options(str, REVEAL_MODES)],
        "salt": [Bytes(16, hex=True), None],
        "tag": [String(1)],
        "workers": [Interval(int, 1, None, closed="left"), None],
        "chunk_size": [Interval(int, 1, None, closed="left")],
        "parallel_threshold": [Interval(int, 0, None, closed="left")],
        "message_rows": [Interval(int, 1, None, closed="left")],
        "timeout": [Interval(float, 0, None, closed="neither", note="seconds"), None],
        "order_key": [Bytes(16, hex=True), None],
    }

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> PsiOptions:
        """Options from keyword arguments or a ``[psi]`` table of ``job.toml``.

        Normalization is given either as ``normalization={...}`` / a ``Normalization`` or as the flat
        flags ``strip``, ``casefold``, ``nfkc``; ``salt`` may be bytes or a hex string. An unknown
        key is a ``ConfigError`` listing the known ones.
        """
        check_keys(options, [*cls.option_names(), *_NORMALIZATION_KEYS], cls._option_label)
        values = {k: v for k, v in options.items() if k not in _NORMALIZATION_KEYS}
        flags = check_table(
            {k: options[k] for k in _NORMALIZATION_KEYS if k in options},
            NORMALIZATION_CONSTRAINTS,
            cls._option_label,
        )
        normalization = values.pop("normalization", None)
        if isinstance(normalization, Mapping):
            nested = check_table(normalization, NORMALIZATION_CONSTRAINTS, "normalization setting")
            normalization = Normalization(**{**nested, **flags})
        elif normalization is None:
            normalization = Normalization(**flags)
        elif flags and isinstance(normalization, Normalization):
            normalization = dataclasses.replace(normalization, **flags)
        return cls(normalization=normalization, **values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PsiOptions:
        """The same as ``from_mapping`` (every options class of a job section has ``from_dict``)."""
        return cls.from_mapping(values)

    def settings(self) -> dict[str, str]:
        """The settings every party must share, as strings (compared before the PSI starts)."""
        return {"protocol": "vfl/psi/v1", **self.normalization.settings(), "reveal": self.reveal}


@dataclass(frozen=True, eq=False)
class PsiResult:
    """What one party knows after a PSI run.

    ``rows`` are positions (0-based) into the ids this party passed in, listed in the **shared
    order**: ``rows[i]`` at every party is the same customer, so ``frame.iloc[result.rows]`` lines
    up across parties (``align`` does exactly that). ``ids`` are this party's original id values for
    those rows; they never leave the party. Under ``reveal="guest-only"`` a host gets only ``size``
    (``rows_revealed`` is False and ``rows`` is empty). ``set_sizes`` holds the number of distinct
    ids of every party this party learned about (its own included).
    """

    party: str
    role: Literal["guest", "host"]
    size: int
    rows: np.ndarray
    ids: pd.Series
    rows_revealed: bool
    set_sizes: Mapping[str, int]
    duplicates_dropped: int = 0
    # the guest: per host, that host's position (in the shuffled order it sent) of every shared row, in the
    # shared order; a host: its own rows in that shuffled order. For jobs that work on every host row
    # without the host learning which are shared (the audience cross-tab under reveal = "guest-only").
    host_positions: Mapping[str, np.ndarray] = field(default_factory=dict)
    shuffled_rows: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.size == 0

    def require_nonempty(self) -> None:
        """Raise ``DataError`` when the intersection is empty (a training job must not start on it)."""
        if self.size == 0:
            sizes = ", ".join(f"'{p}' has {n}" for p, n in self.set_sizes.items())
            raise DataError(
                f"the parties share no ids: the private set intersection is empty ({sizes} distinct ids); "
                "check that every party uses the same id column, id format and normalization"
            )

    def align(self, frame: pd.DataFrame) -> pd.DataFrame:
        """This party's rows of ``frame`` (the table whose id column was aligned) in the shared order."""
        if not self.rows_revealed:
            return frame.iloc[0:0].reset_index(drop=True)
        return frame.iloc[self.rows].reset_index(drop=True)
