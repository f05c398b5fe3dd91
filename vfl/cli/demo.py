"""``vfl demo``: a real three-party federation on this machine.

Three workspaces (guest, host, arbiter) are created from the bundled breast-cancer data split between
a guest (label + 10 columns) and a host (20 other columns); each party then runs as its own process
(``vfl run``), talking Arrow Flight over loopback with mutual TLS, exactly as on three machines.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vfl.errors import ConfigError, VflError

ROLES = (("guest", "guest"), ("host", "host"), ("arbiter", "arbiter"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setup_demo(
    base: Path, *, key_bits: int, max_epochs: int | None, arbiter: bool = True
) -> tuple[dict[str, Path], Path]:
    """Create the three workspaces (two without ``arbiter``: the job then trains arbiter-free, every
    data party under its own key), the shared federation file and the job file under ``base``."""
    from vfl import datasets
    from vfl.cli.workspace import DataSpec, create_workspace
    from vfl.config import Federation, JobConfig

    data = {
        "guest": DataSpec(datasets.path("breast_hetero_guest.csv"), "id", "y", None),
        "host": DataSpec(datasets.path("breast_hetero_host.csv"), "id", None, None),
        "arbiter": None,
    }
    federation = Federation()
    workspaces: dict[str, Path] = {}
    for party_id, role in ROLES if arbiter else ROLES[:2]:
        workspace = base / party_id
        _, card, _ = create_workspace(
            workspace,
            party_id=party_id,
            role=role,
            listen=f"127.0.0.1:{free_port()}",
            data=data[party_id],
            force=True,
        )
        federation.add(card)
        workspaces[party_id] = workspace
    for workspace in workspaces.values():
        federation.save(workspace / "federation.toml")
    # 455 training rows: batches of 128 give four steps an epoch, so training converges in fewer epochs.
    train: dict[str, int] = {"key_bits": key_bits, "batch_size": 128}
    if max_epochs is not None:
        train["max_epochs"] = max_epochs
    job_file = base / "job.toml"
    job_file.write_text(JobConfig(id="demo-breast", kind="train", train=train).to_toml())
    return workspaces, job_file


def _last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def run_demo(
    base: Path, *, key_bits: int, max_epochs: int | None, timeout: float, arbiter: bool = True
) -> dict:
    """Set up and run the federation as three processes (two without ``arbiter``); return the guest's metrics."""
    workspaces, job_file = setup_demo(base, key_bits=key_bits, max_epochs=max_epochs, arbiter=arbiter)
    run_processes(base, workspaces, job_file, timeout=timeout)
    metrics_file = workspaces["guest"] / "out" / "demo-breast" / "metrics.json"
    return json.loads(metrics_file.read_text())


def run_processes(base: Path, workspaces: dict[str, Path], job_file: Path, *, timeout: float) -> None:
    """Run one job at every party, each party its own ``vfl run`` process; the guest's is the one shown."""
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    from vfl.config import PartyConfig

    guest = next((p for p, w in workspaces.items() if PartyConfig.load(w).role == "guest"), "")
    try:
        for party_id in workspaces:
            logs[party_id] = base / f"{party_id}.log"
            command = [
                sys.executable,
                "-m",
                "vfl.cli",
                "run",
                str(job_file),
                "--party",
                str(workspaces[party_id]),
            ]
            if party_id != guest:
                command.append("--quiet")
            with logs[party_id].open("w") as log:
                procs[party_id] = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=None if party_id == guest else subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs.values()):
            failed = [pid for pid, p in procs.items() if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    failed = {pid: p.returncode for pid, p in procs.items() if p.returncode != 0}
    if failed:
        first = next(iter(failed))
        raise VflError(
            f"the demo's {first} process failed (exit {failed[first]}): {_last_error(logs[first])} "
            f"(logs in {base})"
        )


MARKETING_ROLES = (("retailer", "guest"), ("bank", "host"), ("publisher", "host"), ("arbiter", "arbiter"))


def setup_marketing(
    base: Path, *, key_bits: int, max_epochs: int | None, rows: int
) -> tuple[dict[str, Path], list[Path]]:
    """Workspaces of a retailer (guest), a bank and a publisher (hosts) and an arbiter on
    ``vfl.datasets.marketing``, and two jobs: an audience job, then a training job."""
    from vfl.cli.workspace import DataSpec, create_workspace
    from vfl.config import Federation, JobConfig
    from vfl.datasets import marketing

    frames = marketing(rows, seed=7)
    federation = Federation()
    workspaces: dict[str, Path] = {}
    for party_id, role in MARKETING_ROLES:
        spec = None
        if role != "arbiter":
            path = base / f"{party_id}.csv"
            frames[party_id].to_csv(path, index=False)
            spec = DataSpec(path, "id", "purchase" if role == "guest" else None, None)
        workspace = base / party_id
        _, card, _ = create_workspace(
            workspace, party_id=party_id, role=role, listen=f"127.0.0.1:{free_port()}", data=spec, force=True
        )
        federation.add(card)
        workspaces[party_id] = workspace
    for workspace in workspaces.values():
        federation.save(workspace / "federation.toml")
    audience = {
        "epsilon": 1.0,
        "k": 20,
        "key_bits": key_bits,
        "segments": {"retailer": ["age_band"], "bank": ["income_band"], "publisher": ["interest_segment"]},
        "metrics": {"retailer": ["spend"], "bank": ["balance"]},
        "bounds": {"spend": [0.0, 500.0], "balance": [0.0, 50000.0]},
    }
    audience_job = base / "audience.toml"
    audience_job.write_text(
        JobConfig(id="demo-audience", kind="audience", sections={"audience": audience}).to_toml()
    )
    train: dict[str, int] = {"key_bits": key_bits, "batch_size": 256}
    if max_epochs is not None:
        train["max_epochs"] = max_epochs
    train_job = base / "train.toml"
    train_job.write_text(JobConfig(id="demo-marketing", kind="train", train=train).to_toml())
    return workspaces, [audience_job, train_job]


def run_marketing(base: Path, *, key_bits: int, max_epochs: int | None, timeout: float, rows: int) -> dict:
    """The marketing scenario: an audience job, then a training job, every party its own process."""
    workspaces, jobs = setup_marketing(base, key_bits=key_bits, max_epochs=max_epochs, rows=rows)
    for job_file in jobs:
        run_processes(base, workspaces, job_file, timeout=timeout)
    guest_out = workspaces["retailer"] / "out"
    return {
        "overlap": (guest_out / "demo-audience" / "overlap.csv").read_text(),
        "audience_report": guest_out / "demo-audience" / "audience_report.html",
        "metrics": json.loads((guest_out / "demo-marketing" / "metrics.json").read_text()),
        "report": guest_out / "demo-marketing" / "report.html",
    }


def demo(
    directory: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]", help="Where to create the demo workspaces (default: a new temporary folder)."
        ),
    ] = None,
    key_bits: Annotated[int, typer.Option("--key-bits", help="Paillier key size.")] = 2048,
    max_epochs: Annotated[
        int | None, typer.Option("--epochs", help="Training epochs (default: the job default).")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many seconds.")] = 600.0,
    no_arbiter: Annotated[
        bool,
        typer.Option(
            "--no-arbiter", help="Guest and host only: arbiter-free training, each party under its own key."
        ),
    ] = False,
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            help="breast (training on the bundled breast data) or marketing (a retailer, a bank and a "
            "publisher on vfl.datasets.marketing: an audience job, then a training job).",
        ),
    ] = "breast",
    rows: Annotated[int, typer.Option("--rows", help="marketing: the retailer's customers.")] = 4000,
) -> None:
    """Run a real three-party federation on this machine: PSI, training and evaluation over mTLS."""
    from vfl.cli import stdout

    if scenario not in ("breast", "marketing"):
        raise ConfigError(f"--scenario must be breast or marketing, got {scenario!r}")
    base = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vfl-demo-"))
    marker = "job.toml" if scenario == "breast" else "audience.toml"
    if directory and base.exists() and any(base.iterdir()) and not (base / marker).exists():
        raise ConfigError(f"{base} exists and is not a vfl demo folder; choose an empty or new directory")
    base.mkdir(parents=True, exist_ok=True)
    out = stdout()
    if scenario == "marketing":
        out.print(
            f"vfl demo (marketing): retailer, bank, publisher and arbiter as four processes on 127.0.0.1 "
            f"with mutual TLS, in [bold]{base}[/]",
            soft_wrap=True,
        )
        started = time.monotonic()
        result = run_marketing(base, key_bits=key_bits, max_epochs=max_epochs, timeout=timeout, rows=rows)
        out.print("audience overlap:\n" + result["overlap"], soft_wrap=True)
        out.print(f"audience report: [bold]{result['audience_report']}[/]", soft_wrap=True)
        out.print(
            f"training: AUC {result['metrics']['metrics']['auc']:.4f} on {result['metrics']['intersection_size']} "
            f"shared customers; report: [bold]{result['report']}[/] ({time.monotonic() - started:.1f} s in all)",
            soft_wrap=True,
        )
        out.print(f"privacy budget: vfl budget --party {base / 'retailer'}", soft_wrap=True)
        return
    who = (
        "guest and host as two processes (arbiter-free)"
        if no_arbiter
        else "guest, host and arbiter as three processes"
    )
    out.print(f"vfl demo: {who} on 127.0.0.1 with mutual TLS, in [bold]{base}[/]", soft_wrap=True)
    started = time.monotonic()
    metrics = run_demo(
        base, key_bits=key_bits, max_epochs=max_epochs, timeout=timeout, arbiter=not no_arbiter
    )
    table = Table(title="held-out metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("auc", "ks", "accuracy", "precision", "recall", "f1", "log_loss", "log_loss_calibrated"):
        if metrics["metrics"].get(key) is not None:
            table.add_row(key, f"{metrics['metrics'][key]:.4f}")
    out.print(table)
    out.print(f"positive class: {metrics.get('positive_class', '1')!r}", soft_wrap=True)
    for warning in metrics.get("warnings", []):
        out.print(f"[yellow]note:[/] {warning}", soft_wrap=True)
    report = base / "guest" / "out" / "demo-breast" / "report.html"
    out.print(
        f"{metrics['intersection_size']} aligned rows, trained in {metrics['epochs']} epochs, "
        f"{time.monotonic() - started:.1f} s in all",
        soft_wrap=True,
    )
    out.print(f"report: [bold]{report}[/]", soft_wrap=True)
    out.print(f"ledgers: {base}/*/out/demo-breast/ledger.json (inspect with 'vfl inspect')", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
