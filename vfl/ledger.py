"""The leakage ledger (DESIGN.md §9): what a party may learn, and every message it sent and received.

Each job writes it to the party's output directory so a compliance team can audit what left the
organization, message by message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vfl.io import atomic_write_json
from vfl.transport.channel import MessageLog

LEARNS: dict[str, dict[str, list[str]]] = {
    "guest": {
        "learns": [
            "which of its rows are in the intersection, and the intersection size",
            "the other parties' set sizes",
            "its own gradient",
            "the training loss per epoch",
            "final scores of the aligned rows",
            "the sum of the hosts' partial scores (a single host's partial score when there is only one host)",
        ],
        "never": [
            "any host column",
            "any host weight",
            "a single host's partial score (with two or more hosts)",
        ],
    },
    "host": {
        "learns": [
            "which of its rows are in the intersection (positions in the shared order), and the intersection size",
            "the other parties' set sizes",
            "batch membership and the held-out rows as positions",
            "its own gradient",
            "when training stops",
        ],
        "never": ["labels", "guest columns", "guest weights", "scores"],
    },
    "arbiter": {
        "learns": [
            "masked gradient values (uniformly masked, 40+ bits of statistical hiding)",
            "the loss per epoch",
            "the number of aligned training rows",
        ],
        "never": ["anything per row", "any weight", "any gradient", "any label or feature"],
    },
}


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

    @classmethod
    def from_log(
        cls, *, job_id: str, party: str, role: str, log: MessageLog, notes: list[str] | None = None
    ) -> Ledger:
        entry = LEARNS[role]
        return cls(
            job_id=job_id,
            party=party,
            role=role,
            learns=list(entry["learns"]),
            never_learns=list(entry["never"]),
            totals=log.summary(),
            messages=[asdict(r) for r in log.records],
            notes=list(notes or []),
        )

    def bytes_sent(self) -> int:
        return sum(slot.get("sent", {}).get("bytes", 0) for slot in self.totals.values())

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, asdict(self))
