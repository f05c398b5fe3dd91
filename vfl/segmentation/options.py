"""The ``[segment]`` options of a joint segmentation job, and a party's own segmentation policy.

``SegmentOptions`` is shared by every party (job.toml, agreed before any work); ``SegmentPolicy``
is each party's own decision (``[segment]`` in its party.toml), sent to the guest at the start of
the protocol: whether the party allows per-customer segment labels at the guest, and whether the
guest may see DP-noised means of the party's columns per segment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from vfl import constraints as vc
from vfl.constraints import ConstraintList, OptionsTable
from vfl.errors import ConfigError

MEMBERSHIP = ("off", "guest")
SMALL_SEGMENTS = ("merge", "suppress")
KEY_BITS = (1024, 2048, 3072)


@dataclass(frozen=True)
class SegmentOptions(OptionsTable):
    """Options of a ``segment`` job (DESIGN.md §14).

    * ``k``: the number of joint segments.
    * ``weights``: ``{party: weight}`` scaling each party's share of the distance (default 1 each).
    * ``local_k``: local clusters per party (0: the rule of ``vfl.segmentation.local.default_local_k``,
      ``max(K, min(4K, (n / min_mean_cell) ** (1 / P)))``).
    * ``epsilon``: the DP budget each host's cross-tab spends (counts and outcome sums share it).
    * ``k_threshold``: no local cluster whose distances cross and no released segment has fewer rows.
    * ``min_size``: smallest released segment (noised size; ``>= k_threshold``); smaller ones are merged
      into the nearest (``small_segments = "merge"``) or withheld (``"suppress"``). A ``k`` that cannot
      give every segment ``min_size`` rows is refused.
    * ``outcome``: a 0/1 column of the guest profiled per segment (rate with a Wilson interval).
    * ``membership``: ``"guest"`` asks for each shared customer's segment at the guest; every host's
      party.toml must allow it (``[segment] release_membership = true``); any number of hosts.
    * ``means_epsilon``: the DP budget of a host's noised column means per segment (sent only where its
      policy ``share_means`` allows).
    * ``key_bits``, ``seed``, ``n_init``.

    No option turns the noise off.
    """

    k: int = 8
    weights: Mapping[str, float] | None = None
    local_k: int = 0
    min_mean_cell: float = 5.0
    epsilon: float = 1.0
    k_threshold: int = 20
    min_size: int = 50
    small_segments: str = "merge"
    outcome: str | None = None
    membership: str = "off"
    means_epsilon: float = 0.5
    key_bits: int = 2048
    seed: int = 0
    n_init: int = 10

    _option_label: ClassVar[str] = "segment option"
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {
        "k": [vc.Interval(int, 1, None, closed="left")],
        "weights": [vc.InstanceOf(dict, "a table {party = weight}"), None],
        "local_k": [vc.Interval(int, 0, None, closed="left", note="0 picks it from the audience size")],
        "min_mean_cell": [vc.Interval(float, 0, None, closed="neither")],
        "epsilon": [vc.Interval(float, 0, None, closed="neither")],
        "k_threshold": [vc.Interval(int, 2, None, closed="left")],
        "min_size": [vc.Interval(int, 2, None, closed="left")],
        "small_segments": [vc.Options(str, SMALL_SEGMENTS)],
        "outcome": [vc.String(1), vc.Sentinel("", None, "no outcome"), None],
        "membership": [vc.Options(str, MEMBERSHIP)],
        "means_epsilon": [vc.Interval(float, 0, None, closed="neither")],
        "key_bits": [vc.Options(int, KEY_BITS)],
        "seed": [vc.Interval(int, 0, None, closed="left")],
        "n_init": [vc.Interval(int, 1, None, closed="left")],
    }

    def _cross_field_rules(self) -> None:
        if self.min_size < self.k_threshold:
            raise ConfigError(
                f"segment option min_size ({self.min_size}) must be at least k_threshold ({self.k_threshold}): "
                "every released segment passes the same threshold as an audience cell"
            )
        if self.weights is not None:
            clean = {}
            for party, w in self.weights.items():
                if isinstance(w, bool) or not isinstance(w, int | float) or not (w >= 0 and w < float("inf")):
                    raise ConfigError(
                        f"segment option weights: {party!r} must be a non-negative number, got {w!r}"
                    )
                clean[str(party)] = float(w)
            if clean and not any(w > 0 for w in clean.values()):
                raise ConfigError("segment option weights: at least one party needs a positive weight")
            object.__setattr__(self, "weights", clean)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SegmentOptions:
        return super().from_dict(values)

    def party_weight(self, party: str) -> float:
        return 1.0 if not self.weights else float(self.weights.get(party, 1.0))


@dataclass(frozen=True)
class SegmentPolicy(OptionsTable):
    """A party's own ``[segment]`` policy (party.toml); both off by default."""

    release_membership: bool = False
    share_means: bool = False

    _option_label: ClassVar[str] = "segment policy"
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {
        "release_membership": [vc.Boolean(note="allow each shared customer's segment at the guest")],
        "share_means": [vc.Boolean(note="allow DP-noised means of this party's columns per segment")],
    }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SegmentPolicy:
        return super().from_dict(values)
