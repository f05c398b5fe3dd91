"""What every data party does around the protocols: pick its columns, prepare them, save its outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from vfl.parties.state import StateStore, job_fingerprint
from vfl.protocols.lr import LrPlan, PartyState

from vfl.data import Preprocessor, require_columns
from vfl.errors import ConfigError, DataError, ProtocolError, VflError
from vfl.io import check_writable
from vfl.ledger import Ledger
from vfl.model import INTERCEPT, ModelShard
from vfl.options import TrainOptions
from vfl.psi.options import PsiOptions, PsiResult
from vfl.transport import Channel

log = logging.getLogger(__name__)

# A progress callback: (stage, done, total, note). Stages: "psi", "train", "score".
ProgressFn = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class Job:
    """One federated job as every party sees it: who takes part, with which options."""

    id: str
    guest: str
    hosts: tuple[str, ...]
    arbiter: str | None = None
    options: TrainOptions = field(default_factory=TrainOptions)
    psi: PsiOptions = field(default_factory=PsiOptions)
    reveal: str | None = None  # joint scoring: "sum" (default with 2+ hosts) or "partial"

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("a job needs at least one host")
        names = [self.guest, *self.hosts, *([self.arbiter] if self.arbiter else [])]
        if len(set(names)) != len(names):
            raise ConfigError(f"every party of a job needs its own id, got {names}")

    @property
    def parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts, *((self.arbiter,) if self.arbiter else ()))

    @property
    def lr_plan(self) -> LrPlan:
        if self.arbiter is None:
            raise ConfigError(
                "training needs an arbiter (it holds the Paillier key); add one to the federation"
            )
        return LrPlan(self.id, self.guest, self.hosts, self.arbiter, self.options)

    @property
    def training_psi(self) -> PsiOptions:
        """PSI options for a training job: the shared order follows from the seed, so runs repeat."""
        if self.psi.order_key is not None:
            return self.psi
        key = hashlib.sha256(f"vfl/shared-order/v1|{self.options.seed}".encode()).digest()
        return dataclasses.replace(self.psi, order_key=key)

    @property
    def scoring_reveal(self) -> str:
        return self.reveal or ("sum" if len(self.hosts) >= 2 else "partial")


def feature_columns(
    frame: pd.DataFrame, id_column: str, label: str | None, offered: list[str] | None
) -> list[str]:
    """The columns a party offers to the job: the configured list, or every column but the id and label."""
    if offered is not None:
        require_columns(frame, offered, what="the data")
        columns = [c for c in offered if c not in (id_column, label)]
    else:
        columns = [c for c in frame.columns if c not in (id_column, label)]
    if not columns:
        raise DataError(
            "the data has no feature columns besides the id" + (" and the label" if label else "")
        )
    return columns


def prepare_features(
    aligned: pd.DataFrame,
    columns: list[str],
    train_rows: np.ndarray,
    options: TrainOptions,
    *,
    intercept: bool,
) -> tuple[Preprocessor, np.ndarray, list[str]]:
    """Fit this party's scaler on its training rows; return it, the model matrix of every aligned row, and names."""
    scaler = Preprocessor.fit(aligned.iloc[train_rows][columns], clip_sigma=options.clip_sigma)
    if scaler.imputed:
        log.info("imputed missing values with column medians: %s", scaler.imputed)
    matrix = scaler.transform(aligned[columns])
    names = scaler.output_names
    if intercept:
        matrix = np.hstack([np.ones((len(matrix), 1)), matrix])
        names = [INTERCEPT, *names]
    return scaler, matrix, names


def fail_fast(channel: Channel, job: Job, action: Callable[[], Any]) -> Any:
    """Run a step; if it fails, tell every other party why before raising, so nobody waits for us in vain."""
    try:
        return action()
    except VflError as exc:
        channel.notify_abort(list(job.parties), str(exc))
        raise


def agree_on_job(channel: Channel, job: Job) -> None:
    """Compare the shared part of the job with every other party before any work; name what differs."""
    mine = {"job_id": job.id, **{f"train.{k}": v for k, v in job.options.to_dict().items()}}
    mine.update({f"psi.{k}": v for k, v in job.psi.settings().items()})
    payload = pa.table({"settings": [json.dumps(mine, sort_keys=True, default=str)]})
    others = [p for p in job.parties if p != channel.party]
    for peer in others:
        channel.send(peer, "job/settings", payload)
    problems = []
    for peer in others:
        theirs = json.loads(channel.recv(peer, "job/settings")["settings"][0].as_py())
        differ = sorted(
            k
            for k in set(mine) | set(theirs)
            if json.dumps(mine.get(k), default=str) != json.dumps(theirs.get(k), default=str)
        )
        if differ:
            problems.append(f"party '{peer}' differs in {', '.join(differ)}")
    if problems:
        raise ConfigError(
            f"the parties run different versions of job '{job.id}': {'; '.join(problems)}; "
            "every party must run the same job.toml"
        )


def require_intersection(result: PsiResult) -> None:
    result.require_nonempty()
    if not result.rows_revealed:
        raise ConfigError(
            "training needs PSI reveal='all': with 'guest-only' the hosts do not know their rows"
        )


def exchange_digests(channel: Channel, job: Job, shard: ModelShard) -> dict[str, str]:
    """Send this shard's digest to the other data parties and collect theirs (ties the shards of one model)."""
    me = channel.party
    parties = [job.guest, *job.hosts]
    table = pa.table({"digest": [shard.digest()]})
    for p in parties:
        if p != me:
            channel.send(p, "model/digest", table)
    return {p: channel.recv(p, "model/digest")["digest"][0].as_py() for p in parties if p != me}


def open_store(output_dir: Path | None, job: Job, ids: pd.Series | None) -> StateStore | None:
    """This party's resumable state for the job (None when nothing is written to disk)."""
    if output_dir is None:
        return None
    return StateStore(output_dir / "state", job_fingerprint(job.id, job.options.digest(), ids))


def checkpointing(store: StateStore | None, resuming: bool) -> dict[str, Any]:
    """The ``resume`` / ``on_epoch`` arguments of a data party's training role for this store."""
    return {
        "resume": [PartyState.from_dict(c) for c in store.checkpoints()]
        if store is not None and resuming
        else None,
        "on_epoch": (lambda state: store.save_checkpoint(state.to_dict())) if store is not None else None,
    }


def make_shard(
    channel: Channel, job: Job, role: str, names: list[str], weights: np.ndarray, scaler: Preprocessor
) -> ModelShard:
    """This party's model shard, tied to the other data parties' shards by their digests."""
    shard = ModelShard(
        job_id=job.id,
        party=channel.party,
        role=role,
        columns=names,
        weights=weights.tolist(),
        preprocessor=scaler.to_dict(),
        options=job.options.to_dict(),
    )
    shard.peer_digests = exchange_digests(channel, job, shard)
    return shard


def training_notes(info: dict[str, Any], generations: int) -> list[str]:
    """Ledger notes every data party writes about a training job."""
    notes = [f"intersection size {info['size']}; set sizes {info['set_sizes']}"]
    if generations > 1:
        notes.append(f"training was resynchronized {generations - 1} time(s) after a party restarted")
    return notes


def write_outputs(directory: Path | None, shard: ModelShard | None, ledger: Ledger) -> dict[str, Path]:
    """Save the model shard and the ledger atomically; return what was written."""
    if directory is None:
        return {}
    check_writable(directory)
    written = {}
    if shard is not None:
        written["model"] = shard.save(directory / "model.json")
    written["ledger"] = ledger.save(directory / "ledger.json")
    return written


def send_positions(channel: Channel, to: str, tag: str, positions: np.ndarray) -> None:
    channel.send(to, tag, pa.table({"row": pa.array(np.asarray(positions, dtype=np.int64))}))


def recv_positions(channel: Channel, frm: str, tag: str, n_rows: int) -> np.ndarray:
    rows = channel.recv(frm, tag)["row"].to_numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows or len(np.unique(rows)) != len(rows)):
        raise ProtocolError(f"party '{frm}' sent invalid row positions for '{tag}'")
    return rows
