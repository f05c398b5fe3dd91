"""The arbiter (coordinator): holds the Paillier private key, no data; sees only masked values and the loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parties.common import Job, write_outputs
from protocols import lr
from vfl.crypto import PrivateKey, PublicKey, WorkerPool
from vfl.ledger import Ledger
from vfl.transport import Channel


@dataclass
class ArbiterOutcome:
    summary: lr.ArbiterSummary
    ledger: Ledger
    outputs: dict[str, Path] = field(default_factory=dict)


def train(
    channel: Channel,
    job: Job,
    *,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    output_dir: Path | None = None,
    workers: WorkerPool | None = None,
) -> ArbiterOutcome:
    """Coordinate a training job: check agreement, hand out the public key, decrypt masked gradients and the loss."""
    summary = lr.run_arbiter(channel, job.lr_plan, keypair=keypair, workers=workers)
    notes = [f"loss per epoch: {', '.join(f'{x:.6f}' for x in summary.losses)}"]
    ledger = Ledger.from_log(job_id=job.id, party=channel.party, role="arbiter", log=channel.log, notes=notes)
    return ArbiterOutcome(summary, ledger, write_outputs(output_dir, None, ledger))
