"""Shared pieces of the fault tests: a small three-party federation on disk, snapshots, free ports."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vfl.cli.workspace import DataSpec, create_workspace
from vfl.config import Federation, JobConfig, PartyConfig, PeerCard
from vfl.transport.flight import FlightSettings

ROOT = Path(__file__).resolve().parents[2]
# Short deadlines: a failing party's best-effort abort notice to peers that are not running gives up fast.
FAST = FlightSettings(connect_deadline=0.5, initial_backoff=0.05, max_backoff=0.2, probe_timeout=0.5)
N_ROWS = 120


def free_port() -> int:
    """A port the OS reports free on loopback (never a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guest_frame(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    return pd.DataFrame({"id": [f"c{i:04d}" for i in range(n)], "y": y, "a": x[:, 0], "b": x[:, 1]})


def host_frame(n: int = N_ROWS, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"id": [f"c{i:04d}" for i in range(n)], "c": rng.normal(size=n), "d": rng.normal(size=n)}
    )


@dataclass
class Fed:
    """Three workspaces (guest, host, arbiter) under ``base`` with a shared federation and job file."""

    base: Path
    ws: dict[str, Path]
    job: Path
    cards: dict[str, PeerCard]

    def party(self, name: str) -> PartyConfig:
        return PartyConfig.load(self.ws[name])

    def federation(self, name: str = "guest") -> Federation:
        return Federation.load(self.ws[name] / "federation.toml")

    def save_federation(self, federation: Federation, *names: str) -> None:
        for name in names or tuple(self.ws):
            federation.save(self.ws[name] / "federation.toml")

    def write_job(self, text: str, path: Path | None = None) -> Path:
        target = path or self.job
        target.write_text(text)
        return target


def make_federation(
    base: Path,
    *,
    guest: pd.DataFrame | None = None,
    host: pd.DataFrame | None = None,
    train: dict | None = None,
) -> Fed:
    base.mkdir(parents=True, exist_ok=True)
    data_dir = base / "data"
    data_dir.mkdir(exist_ok=True)
    (guest if guest is not None else guest_frame()).to_csv(data_dir / "guest.csv", index=False)
    (host if host is not None else host_frame()).to_csv(data_dir / "host.csv", index=False)
    specs = {
        "guest": DataSpec(data_dir / "guest.csv", "id", "y", None),
        "host": DataSpec(data_dir / "host.csv", "id", None, None),
        "arbiter": None,
    }
    federation = Federation()
    ws: dict[str, Path] = {}
    cards: dict[str, PeerCard] = {}
    for name, spec in specs.items():
        _, card, _ = create_workspace(
            base / name, party_id=name, role=name, listen=f"127.0.0.1:{free_port()}", data=spec
        )
        federation.add(card)
        ws[name] = base / name
        cards[name] = card
    for path in ws.values():
        federation.save(path / "federation.toml")
    job = base / "job.toml"
    options = {"key_bits": 1024, "max_epochs": 2, "batch_size": 64}
    job.write_text(JobConfig(id="job-1", kind="train", train={**options, **(train or {})}).to_toml())
    return Fed(base, ws, job, cards)


def snapshot(*roots: Path) -> dict[str, tuple[bool, int, int]]:
    """Every file and folder under ``roots`` (or the file itself): kind, size and mtime (files only).

    A folder's own mtime is left out: a check that creates and removes a probe file touches it.
    """
    seen: dict[str, tuple[bool, int, int]] = {}
    for root in roots:
        paths = [root, *root.rglob("*")] if root.is_dir() else [root]
        for p in paths:
            if p.exists() or p.is_symlink():
                st = p.lstat()
                seen[str(p)] = (True, 0, 0) if p.is_dir() else (False, st.st_size, st.st_mtime_ns)
    return seen


def expired_identity(key_path: Path, cert_path: Path, party_id: str, monkeypatch) -> None:  # noqa: ANN001
    """Replace a party's key and certificate by a pair whose certificate expired a year ago."""
    from vfl.transport import tls

    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    with monkeypatch.context() as m:
        m.setattr(tls, "_utcnow", lambda: past)
        tls.create_identity(party_id, key_path, cert_path, hosts=["127.0.0.1"], valid_days=30, overwrite=True)


def card_of(fed: Fed, name: str) -> PeerCard:
    """The party's card rebuilt from its current certificate (as 'vfl init --force' would print it)."""
    from vfl.transport.tls import fingerprint, load_certificate

    cert = load_certificate(fed.ws[name] / "tls" / "cert.pem")
    old = fed.cards[name]
    pem = (fed.ws[name] / "tls" / "cert.pem").read_text()
    return PeerCard(old.id, old.role, old.address, fingerprint(cert), pem)


VFL_ENV = {"PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}  # a vfl process of this checkout


def vfl_process(*args: str, timeout: float = 120) -> subprocess.Popen:
    """``python -m vfl.cli ARGS`` as a real process (stdout and stderr captured separately)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vfl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **VFL_ENV},
        cwd=ROOT,
    )


def start_party(workspace: Path, job: Path, log: Path) -> subprocess.Popen:
    """``vfl run JOB --party WORKSPACE`` as a real process, its output appended to ``log``."""
    command = [sys.executable, "-m", "vfl.cli", "run", str(job), "--party", str(workspace), "--quiet"]
    with log.open("a") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **VFL_ENV}, cwd=ROOT
        )


def saved_epoch(workspace: Path, job_id: str) -> int:
    """The latest epoch in a party's resumable state of job ``job_id`` (-1 while it has saved none)."""
    try:
        meta = json.loads((workspace / "out" / job_id / "state" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return -1
    return max((c["epoch"] for c in meta["checkpoints"]), default=-1)
