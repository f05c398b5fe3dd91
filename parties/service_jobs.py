"""The jobs of a party service (DESIGN.md §11): their files under ``service/jobs/<id>/``, running one job
in a worker process (and the guest's in ``vfl submit``), and cancelling one locally.

Split out of ``vfl.parties.service``, which re-exports every name here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vfl.config import Federation, JobConfig, PartyConfig
from vfl.errors import ConfigError, JobCancelledError, PeerAbortedError, VflError
from vfl.io import atomic_write_json
from vfl.parties.common import RowLimit
from vfl.parties.network import load_party_identity, to_peers
from vfl.parties.runner import run_party
from vfl.protocols.session import Members
from vfl.service.logs import job_log_path
from vfl.service.models import ModelCache
from vfl.service.store import JobRecord, JobStateError, JobStore, process_alive
from vfl.transport.address import format_address, parse_address

log = logging.getLogger("vfl.parties.service")  # the service's logger, as before the split

SERVICE_DIR = "service"
# What a cancelled job may have written besides its ledger: removed at every party.
JOB_OUTPUTS = ("model.json", "scores.csv", "metrics.json", "report.json", "report.html", "aligned_ids.csv")


# ---- files ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFiles:
    """``<workspace>/service/jobs/<id>/``: what a worker needs to run one job and what it reports."""

    directory: Path

    @classmethod
    def of(cls, workspace: str | Path, job_id: str) -> JobFiles:
        job_log_path(workspace, job_id)  # refuses a job id that cannot name a file
        return cls(Path(workspace) / SERVICE_DIR / "jobs" / job_id)

    job = property(lambda self: self.directory / "job.toml", doc="the job file")
    federation = property(lambda self: self.directory / "federation.toml", doc="the job's federation")
    listen_file = property(lambda self: self.directory / "listen", doc="this party's job inbox address")
    result = property(lambda self: self.directory / "result.json", doc="the worker's result")
    limit_file = property(
        lambda self: self.directory / "row_limit.json", doc="the rows the job was accepted for"
    )

    def write_row_limit(self, limit: RowLimit) -> None:
        atomic_write_json(self.limit_file, {"partner": limit.partner, "rows": limit.rows})

    def row_limit(self) -> RowLimit | None:
        """The rows cap this party's service accepted the job under (None: no cap applies)."""
        try:
            saved = json.loads(self.limit_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the job's rows cap in {self.limit_file} is unreadable ({exc}); cancel the job"
            ) from exc
        return RowLimit(str(saved["partner"]), int(saved["rows"]))

    def listen(self) -> str:
        return self.listen_file.read_text().strip()

    def read_result(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.result.read_text())
        except (OSError, ValueError):
            return None


def service_info_path(workspace: str | Path) -> Path:
    return Path(workspace) / SERVICE_DIR / "service.json"


def read_service_info(workspace: str | Path) -> dict[str, Any] | None:
    """``service/service.json`` of a service that runs now at ``workspace`` (None: none runs)."""
    try:
        info = json.loads(service_info_path(workspace).read_text())
        alive = process_alive(int(info["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if alive else None


def members_of(federation: Federation) -> Members:
    guests = federation.with_role("guest")
    if len(guests) != 1:
        raise ConfigError(f"the federation needs exactly one guest, it has {len(guests)}")
    arbiters = federation.with_role("arbiter")
    return Members(
        guests[0].id, tuple(c.id for c in federation.with_role("host")), arbiters[0].id if arbiters else None
    )


def job_federation(federation: Federation, addresses: dict[str, str]) -> Federation:
    """The federation a served job runs in: every party at its job inbox address."""
    cards = []
    for card in federation.parties:
        if card.id in addresses:
            parse_address(addresses[card.id], f"the job address of '{card.id}'")
            card = replace(card, address=addresses[card.id])
        cards.append(card)
    return Federation(cards)


def with_port(address: str, port: int) -> str:
    host, _ = parse_address(address)
    return format_address(host, port)


def offered_columns(party: PartyConfig) -> list[str]:
    """The columns this party offers to jobs (``[data] columns``, else every column of its data file)."""
    if party.role == "arbiter" or party.data is None:
        return []
    if party.columns is not None:
        return list(party.columns)
    try:
        if party.data.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            names = list(pq.read_schema(party.data).names)
        else:
            import pandas as pd

            names = list(pd.read_csv(party.data, nrows=0).columns)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data file {party.data} cannot be read: {exc}") from exc
    return [c for c in names if c not in (party.id_column, party.label_column)]


def count_rows(path: Path) -> int:
    """The rows of a CSV or Parquet data file (Parquet: from its metadata; CSV: streamed)."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        import pyarrow.csv as pacsv

        return sum(batch.num_rows for batch in pacsv.open_csv(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data file {path} cannot be read: {exc}") from exc


def job_epsilon(config: JobConfig) -> float:
    """The privacy budget a job spends (its sections' ``epsilon``; 0 for kinds that release no noisy aggregate)."""
    total = 0.0
    for name in ("psi", "train", "predict", *config.sections):
        value = config.section(name).get("epsilon")
        if isinstance(value, int | float) and not isinstance(value, bool):
            total += float(value)
    return total


def remove_partial_outputs(output_dir: Path) -> None:
    """A cancelled job leaves no model, scores or report (only its ledger), and no checkpoints."""
    for name in JOB_OUTPUTS:
        with contextlib.suppress(FileNotFoundError):
            (output_dir / name).unlink()
    shutil.rmtree(output_dir / "state", ignore_errors=True)


# ---- running one job (the worker's code, and the guest's in 'vfl submit') -------------------------


def _raise_cancelled(signum: int, frame: object) -> None:
    raise JobCancelledError("the job was cancelled (SIGTERM)")


def run_job(
    workspace: str | Path,
    files: JobFiles,
    *,
    listen: str,
    progress: Any = None,
    settings: Any = None,
    data: str | Path | None = None,
    models: ModelCache | None = None,
) -> dict[str, Any]:
    """Run this party's role of a served job; write and return its result (never raises a ``VflError``).

    ``models``: shards loaded already (the warm worker's cache), used when the job scores with one.

    SIGTERM cancels the job: every peer is told (abort code ``cancelled``) and the partial outputs
    are removed. A peer's cancel ends it the same way here.
    """
    party = PartyConfig.load(workspace)
    config = JobConfig.load(files.job)
    out = party.output_dir / config.id
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_cancelled)
    result: dict[str, Any]
    try:
        outcome = run_party(
            workspace, files.job, federation_file=files.federation, listen=listen, progress=progress,
            settings=settings, data=data, models=models, row_limit=files.row_limit(),
        )  # fmt: skip
        summary = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in outcome.summary.items()}
        result = {
            "state": "completed",
            "outcome": ", ".join(f"{k} {v}" for k, v in summary.items()),
            "outputs": [str(p) for p in outcome.outputs.values()],
            "summary": summary,
            "named_outputs": {k: str(p) for k, p in outcome.outputs.items()},
        }
    except JobCancelledError as exc:
        _abort_peers(party, files, config.id, listen)
        remove_partial_outputs(out)
        result = {"state": "cancelled", "outcome": str(exc), "outputs": []}
    except PeerAbortedError as exc:
        if exc.peer_code == "cancelled":
            remove_partial_outputs(out)
            result = {"state": "cancelled", "outcome": str(exc), "outputs": []}
        else:
            result = {"state": "failed", "outcome": str(exc), "outputs": []}
    except VflError as exc:
        result = {"state": "failed", "outcome": str(exc), "outputs": []}
    except Exception as exc:  # noqa: BLE001 - a worker reports, the service records
        log.exception("job %s failed", config.id)
        result = {"state": "failed", "outcome": f"internal error: {exc}", "outputs": []}
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("job %s %s: %s", config.id, result["state"], result["outcome"])
    atomic_write_json(files.result, result)
    return result


def _abort_peers(party: PartyConfig, files: JobFiles, job_id: str, listen: str) -> None:
    """Tell every other party of the job that it was cancelled (best effort: they may be gone)."""
    from vfl.transport.flight import FlightChannel, FlightSettings

    try:
        federation = Federation.load(files.federation)
        host, _ = parse_address(listen)
        settings = FlightSettings(connect_deadline=2.0, probe_timeout=1.0)
        with FlightChannel(
            load_party_identity(party), to_peers(federation), job_id=job_id,
            listen=format_address(host, 0), settings=settings,
        ) as channel:  # fmt: skip
            channel.notify_abort(channel.peers, "cancelled")
    except Exception as exc:  # noqa: BLE001
        log.warning("could not tell every party that job %s was cancelled: %s", job_id, exc)


def cancel_locally(store: JobStore, workspace: Path, record: JobRecord, reason: str) -> JobRecord:
    """Mark a job cancelled here and stop its worker (which tells every peer and removes its outputs)."""
    if record.final:
        return record
    try:
        record = store.cancel(record.id, reason)
    except JobStateError:
        return store.get(record.id)
    if record.pid is not None and process_alive(record.pid, record.pid_token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    else:
        party = PartyConfig.load(workspace)
        remove_partial_outputs(party.output_dir / record.id)
    log.info("job %s cancelled: %s", record.id, reason)
    return record


class PortPool:
    """Ports for job inboxes: from ``ports`` (a range the firewall opens) or any free one."""

    def __init__(self, host: str, ports: range | None = None) -> None:
        self.host = host
        self.ports = ports
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            candidates: Iterable[int] = self.ports if self.ports is not None else (0,) * 20
            for port in candidates:
                if port and port in self._used:
                    continue
                with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as s:
                    try:
                        s.bind((self.host, port))
                    except OSError:
                        continue
                    chosen = s.getsockname()[1]
                if chosen not in self._used:
                    self._used.add(chosen)
                    return chosen
        raise ConfigError(
            f"no free port for a job inbox on {self.host} (job ports {self.ports}); widen --job-ports"
        )

    def keep(self, port: int) -> None:
        with self._lock:
            self._used.add(port)

    def release(self, port: int) -> None:
        with self._lock:
            self._used.discard(port)
