"""The privacy-budget reservation every noised job makes after the agreement (DESIGN.md §13, §14)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vfl.analytics.budget import PrivacyBudget


def reserve_budget(session: Any, job: Any, budget: PrivacyBudget | None, spends: Mapping[str, float]) -> None:
    """Reserve ``spends[partner]`` epsilon of job ``job.id`` with every partner, before any noised number
    moves. All or nothing: a refusal (a cap exceeded) releases what this party reserved, and the session's
    guard makes every party stop with the refusal's message."""
    if budget is None:
        return

    def reserve() -> None:
        done = []
        try:
            for partner, eps in spends.items():
                budget.reserve(job.id, partner, eps)
                done.append(partner)
        except BaseException:
            if done:
                budget.release(job.id)
            raise

    session.guard(reserve)
