"""The ``[audience]`` section of ``job.toml``: one options table (vfl/constraints.py) over ``AudienceOptions``.

Safe defaults: ``epsilon = 1.0`` per job and partner, ``k = 20`` (cells whose noised count is below
20 are withheld), 16 slots per segment column, 2048-bit keys. There is no option that turns the
noise or the threshold off: ``k`` is at least 2 and ``epsilon`` must be a positive finite number.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from vfl.analytics.dp import (
    DEFAULT_EPSILON,
    DEFAULT_FRACTION_BITS,
    DEFAULT_K,
    DEFAULT_MAX_CATEGORIES,
    SPLIT_RULES,
    AudienceOptions,
)
from vfl.constraints import ConstraintList, InstanceOf, Interval, Options, OptionsTable

AUDIENCE_KEY_BITS = (1024, 2048, 3072)


@dataclass(frozen=True)
class AudienceJobOptions(OptionsTable):
    """Every ``[audience]`` option; :attr:`mechanism` is the checked :class:`AudienceOptions`.

    ``segments`` / ``metrics`` map a party id to its columns (``{ retailer = ["age_band"] }``),
    ``bounds`` a metric column to ``[lo, hi]``. ``key_bits`` is the size of each host's Paillier key
    (1024 only for tests: it is refused by nothing but it is not safe).
    """

    epsilon: float = DEFAULT_EPSILON
    k: int = DEFAULT_K
    segments: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, list[str]] = field(default_factory=dict)
    bounds: dict[str, list[float]] = field(default_factory=dict)
    max_categories: int = DEFAULT_MAX_CATEGORIES
    split: Any = "measures"
    fraction_bits: int = DEFAULT_FRACTION_BITS
    key_bits: int = 2048

    _option_label: ClassVar[str] = "audience option"
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {
        "epsilon": [
            Interval(float, 0, None, closed="neither", note="the privacy budget of the job per partner")
        ],
        "k": [Interval(int, 2, None, closed="left", note="cells whose noised count is below k are withheld")],
        "segments": [InstanceOf(dict, "a table {party = [column, ...]}")],
        "metrics": [InstanceOf(dict, "a table {party = [column, ...]}")],
        "bounds": [InstanceOf(dict, "a table {column = [lo, hi]}")],
        "max_categories": [Interval(int, 1, 4096, closed="both")],
        "split": [Options(str, SPLIT_RULES), InstanceOf(dict, "a table {measure = weight}")],
        "fraction_bits": [Interval(int, 0, 32, closed="both")],
        "key_bits": [Options(int, AUDIENCE_KEY_BITS)],
    }

    def _cross_field_rules(self) -> None:
        self.mechanism  # noqa: B018 - builds and checks the columns, bounds and split

    @property
    def mechanism(self) -> AudienceOptions:
        # Every option of the mechanism is a job option of the same name (the job adds key_bits).
        return AudienceOptions(**{f.name: getattr(self, f.name) for f in fields(AudienceOptions)})

    def to_dict(self) -> dict[str, Any]:
        return {**self.mechanism.to_dict(), "key_bits": self.key_bits}

    def columns_of(self, party: str) -> tuple[list[str], list[str]]:
        """The segment and metric columns ``party`` contributes."""
        return list(self.segments.get(party, ())), list(self.metrics.get(party, ()))


__all__ = ["AudienceJobOptions"]
