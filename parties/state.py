"""A party's resumable job state on disk: its alignment and its last epoch checkpoints (DESIGN.md §12).

Everything is written atomically under ``<output dir>/<job id>/state/``; a restarted ``vfl run`` of
the same job finds it, skips the alignment and rejoins training from its checkpoints. The state is
bound to a fingerprint of the job and of the party's ids, so a changed job or data file starts over.
The folder is removed when the job completes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.io import atomic_write_bytes, atomic_write_json
from vfl.transport.channel import MessageLog, MessageRecord

log = logging.getLogger(__name__)

KEEP = 3  # checkpoints kept: parties can be at most one epoch apart, so three always overlap


def job_fingerprint(job_id: str, options_digest: str, ids: pd.Series | None) -> str:
    """What a saved state must match to be resumed: the job, its options, and this party's ids."""
    h = hashlib.sha256(f"{job_id}|{options_digest}".encode())
    if ids is not None:
        h.update(pd.util.hash_pandas_object(ids.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()


@dataclass
class Alignment:
    """This party's rows of the intersection (shared order) and, at a host, the held-out positions."""

    rows: np.ndarray
    held_out: np.ndarray | None
    info: dict[str, Any]


class StateStore:
    """Reads and writes one party's state folder for one job."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self._log: MessageLog | None = None
        self.restored_messages = 0

    # The message log travels with the state, so that a restarted party's ledger covers every
    # process of the job (up to the last checkpoint of the process that died).
    def attach_log(self, log: MessageLog) -> None:
        self._log = log

    def _save_log(self) -> None:
        if self._log is not None:
            atomic_write_json(self.directory / "messages.json", [asdict(r) for r in self._log.records])

    def restore_log(self) -> None:
        """Put the messages of this party's earlier processes of the job before the current ones."""
        if self._log is None:
            return
        try:
            earlier = [
                MessageRecord(**{**r, "columns": tuple(r["columns"])})
                for r in json.loads((self.directory / "messages.json").read_text())
            ]
        except (OSError, ValueError, TypeError, KeyError):
            return
        self.restored_messages = len(earlier)
        self._log.prepend(earlier)

    @property
    def _meta(self) -> Path:
        return self.directory / "state.json"

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self._meta.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("ignoring saved state in %s: it belongs to another job or data", self.directory)
            return None
        return meta

    def save_alignment(self, alignment: Alignment) -> None:
        buffer = io.BytesIO()
        arrays = {"rows": alignment.rows}
        if alignment.held_out is not None:
            arrays["held_out"] = alignment.held_out
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.directory / "alignment.npz", buffer.getvalue())
        atomic_write_json(
            self._meta, {"fingerprint": self.fingerprint, "info": alignment.info, "checkpoints": []}
        )
        self._save_log()

    def load_alignment(self) -> Alignment | None:
        meta = self._read_meta()
        if meta is None:
            return None
        try:
            with np.load(self.directory / "alignment.npz") as data:
                held = data["held_out"] if "held_out" in data.files else None
                return Alignment(data["rows"], held, meta.get("info", {}))
        except (OSError, ValueError, KeyError):
            return None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Keep the last ``KEEP`` epoch states (written atomically, the previous file stays valid)."""
        meta = self._read_meta() or {"fingerprint": self.fingerprint, "info": {}, "checkpoints": []}
        kept = [c for c in meta["checkpoints"] if c["epoch"] != state["epoch"]] + [state]
        meta["checkpoints"] = sorted(kept, key=lambda c: c["epoch"])[-KEEP:]
        atomic_write_json(self._meta, meta)
        self._save_log()

    def checkpoints(self) -> list[dict[str, Any]]:
        meta = self._read_meta()
        return list(meta["checkpoints"]) if meta else []

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
