"""The leakage ledger (DESIGN.md §9): what a party may learn, and every message it sent and received.

Each job writes it to the party's output directory so a compliance team can audit what left the
organization, message by message. What the party learns is not a fixed list per role: the party
runtime derives it from the message tables of the protocols the job actually ran
(``vfl.protocols.messages.learned_by``), so a PSI job's ledger says nothing about gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vfl.io import atomic_write_json
from vfl.transport.channel import MessageLog


@dataclass
class Ledger:
    """What one party of one job learned and exchanged."""

    job_id: str
    party: str
    role: str
    learns: list[str]
    never_learns: list[str]
    totals: dict[str, dict[str, dict[str, int]]]
    messages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    status: str = "completed"  # or "failed": a ledger is written for every job, also one that stopped
    # audience jobs: every released number (its kind, cell, epsilon, noise and who saw it)
    released: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_log(
        cls,
        *,
        job_id: str,
        party: str,
        role: str,
        log: MessageLog,
        learns: list[str],
        never: list[str],
        notes: list[str] | None = None,
        protocols: list[str] | None = None,
        name: Callable[[str], str] | None = None,
        status: str = "completed",
    ) -> Ledger:
        """``name(tag)`` names the declared message a tag belongs to (recorded with each message)."""
        messages = []
        for record in log.records:
            entry = asdict(record)
            if name is not None:
                entry["message"] = name(record.tag)
            messages.append(entry)
        return cls(
            job_id=job_id,
            party=party,
            role=role,
            learns=list(learns),
            never_learns=list(never),
            totals=log.summary(),
            messages=messages,
            notes=list(notes or []),
            protocols=list(protocols or []),
            status=status,
        )

    def bytes_sent(self) -> int:
        return sum(slot.get("sent", {}).get("bytes", 0) for slot in self.totals.values())

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, asdict(self))
