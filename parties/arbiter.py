"""The arbiter (coordinator): holds the Paillier private key, no data; sees only masked values and the loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vfl.crypto import PrivateKey, PublicKey, WorkerPool
from vfl.ledger import Ledger
from vfl.parties.common import Job, ledger_for, open_store, write_outputs
from vfl.protocols import lr
from vfl.protocols.session import Session


@dataclass
class ArbiterOutcome:
    summary: lr.ArbiterSummary
    ledger: Ledger
    outputs: dict[str, Path] = field(default_factory=dict)


def train(
    session: Session,
    job: Job,
    *,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    output_dir: Path | None = None,
    workers: WorkerPool | None = None,
    resumable: bool = False,
) -> ArbiterOutcome:
    """Coordinate a training job: agree, hand out the public key, decrypt masked gradients and the loss.

    With saved checkpoints the arbiter skips the agreement and resynchronizes at once: the data
    parties may still be training and waiting for it (DESIGN.md §12).
    """
    store = open_store(output_dir, job, None) if resumable else None
    saved = [lr.ArbiterState.from_dict(c) for c in store.checkpoints()] if store is not None else []
    if store is not None:
        store.attach_log(session.channel.log)
        if saved:
            store.restore_log()
    if not saved:
        session.guard(lambda: session.agree(job.settings()))
    summary = session.guard(
        lambda: lr.run_arbiter(
            session,
            job.lr_plan,
            keypair=keypair,
            workers=workers,
            resume=saved or None,
            on_epoch=(lambda state: store.save_checkpoint(state.to_dict())) if store is not None else None,
        )
    )
    if output_dir is not None:
        session.guard(lambda: output_dir.mkdir(parents=True, exist_ok=True))
    session.barrier("train")
    notes = [f"loss per epoch: {', '.join(f'{x:.6f}' for x in summary.losses)}"]
    if summary.generations > 1:
        notes.append(f"training was resynchronized {summary.generations - 1} time(s) after a party restarted")
    ledger = ledger_for(session, notes)
    outcome = ArbiterOutcome(summary, ledger, write_outputs(output_dir, None, ledger))
    if store is not None:
        store.clear()
    return outcome


__all__ = ["ArbiterOutcome", "train"]
