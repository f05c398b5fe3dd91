"""Mechanisms of the ``audience`` job: joint audience analytics under differential privacy.

* :mod:`vfl.analytics.dp` -- exact discrete Laplace noise from ``secrets``, the epsilon split,
  the two-share noise scheme, suppression below ``k``, and :class:`AudienceOptions`.
* :mod:`vfl.analytics.crosstab` -- packed one-hot Paillier cross-tabs (counts and clipped sums by
  guest cell x host cell) on top of :mod:`vfl.crypto`.
* :mod:`vfl.analytics.budget` -- the per-partner privacy budget ledger (SQLite, crash-safe).

No network: the protocol (``vfl.protocols``) moves the values these functions produce.
"""

from vfl.analytics.budget import BudgetExceededError, PrivacyBudget
from vfl.analytics.dp import (
    AudienceOptions,
    Released,
    discrete_laplace,
    noise_limit,
    noise_parameter,
    noise_share,
    noise_variance,
    suppress,
)

__all__ = [
    "AudienceOptions",
    "BudgetExceededError",
    "PrivacyBudget",
    "Released",
    "discrete_laplace",
    "noise_limit",
    "noise_parameter",
    "noise_share",
    "noise_variance",
    "suppress",
]
