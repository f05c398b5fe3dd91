"""PSI job options and the result each party gets back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from vfl.errors import ConfigError, DataError
from vfl.psi.ecdh import DEFAULT_CHUNK_SIZE, DEFAULT_PARALLEL_THRESHOLD
from vfl.psi.ids import DEDUPE_MODES, Normalization

REVEAL_MODES = ("all", "guest-only")
_NORMALIZATION_KEYS = ("strip", "casefold", "nfkc")


@dataclass(frozen=True)
class PsiOptions:
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

    def __post_init__(self) -> None:
        if not isinstance(self.normalization, Normalization):
            raise ConfigError(
                "PSI option normalization must be a Normalization (or strip/casefold/nfkc flags)"
            )
        if self.dedupe not in DEDUPE_MODES:
            raise ConfigError(
                f"PSI option dedupe must be one of {', '.join(DEDUPE_MODES)}, got {self.dedupe!r}"
            )
        if self.reveal not in REVEAL_MODES:
            raise ConfigError(
                f"PSI option reveal must be one of {', '.join(REVEAL_MODES)}, got {self.reveal!r}"
            )
        if self.salt is not None and (not isinstance(self.salt, bytes) or len(self.salt) < 16):
            raise ConfigError(
                "PSI option salt must be at least 16 bytes (or a hex string of at least 32 digits)"
            )
        if not self.tag or not isinstance(self.tag, str):
            raise ConfigError(f"PSI option tag must be a non-empty string, got {self.tag!r}")
        for name in ("chunk_size", "message_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"PSI option {name} must be a positive integer, got {value!r}")
        if not isinstance(self.parallel_threshold, int) or self.parallel_threshold < 0:
            raise ConfigError(f"PSI option parallel_threshold must be >= 0, got {self.parallel_threshold!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"PSI option workers must be a positive integer, got {self.workers!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"PSI option timeout must be > 0 seconds, got {self.timeout!r}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> PsiOptions:
        """Options from keyword arguments or a ``[psi]`` table of ``job.toml``.

        Normalization is given either as ``normalization={...}`` / a ``Normalization`` or as the flat
        flags ``strip``, ``casefold``, ``nfkc``; ``salt`` may be bytes or a hex string. An unknown
        key is a ``ConfigError`` listing the known ones.
        """
        known = {f.name for f in dataclasses.fields(cls)} | set(_NORMALIZATION_KEYS)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown PSI option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
            )
        values = {k: v for k, v in options.items() if k not in _NORMALIZATION_KEYS}
        flags = {k: options[k] for k in _NORMALIZATION_KEYS if k in options}
        normalization = values.pop("normalization", None)
        if isinstance(normalization, Mapping):
            bad = sorted(set(normalization) - set(_NORMALIZATION_KEYS))
            if bad:
                raise ConfigError(
                    f"unknown normalization setting(s) {', '.join(bad)}; known: {', '.join(_NORMALIZATION_KEYS)}"
                )
            normalization = Normalization(**{**normalization, **flags})
        elif normalization is None:
            normalization = Normalization(**flags)
        elif flags:
            normalization = dataclasses.replace(normalization, **flags)
        salt = values.get("salt")
        if isinstance(salt, str):
            try:
                values["salt"] = bytes.fromhex(salt)
            except ValueError as exc:
                raise ConfigError("PSI option salt must be bytes or a hex string") from exc
        return cls(normalization=normalization, **values)

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
