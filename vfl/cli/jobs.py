"""``vfl run``, ``vfl predict``, ``vfl inspect`` and ``vfl report``: running jobs and reading their outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from vfl.errors import ConfigError, DataError

PartyOption = Annotated[
    Path, typer.Option("--party", "-p", metavar="DIR", help="This party's workspace (made by 'vfl init').")
]
FederationOption = Annotated[
    Path | None,
    typer.Option(
        "--federation", "-f", metavar="FILE", help="Federation file (default: DIR/federation.toml)."
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option("--data", metavar="PATH", help="Use this data file instead of the one in party.toml."),
]


class ProgressDisplay:
    """Rich progress bars for the stages of a job (PSI, training epochs, scoring)."""

    def __init__(self, quiet: bool = False) -> None:
        from vfl.cli import stderr

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=stderr(),
            disable=quiet,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int, note: str) -> None:
        if stage not in self.tasks:
            labels = {"psi": "aligning ids (PSI)", "train": "training", "score": "scoring"}
            self.tasks[stage] = self.progress.add_task(labels.get(stage, stage), total=total, note="")
        task = self.tasks[stage]
        self.progress.update(task, completed=done, total=max(total, done), note=note)


WaitOption = Annotated[
    float,
    typer.Option(
        "--wait", metavar="SECONDS", min=1.0,
        help="How long to wait for every other party to start the job (the first contact).",
    ),
]  # fmt: skip
ForceOption = Annotated[
    bool, typer.Option("--force", help="Overwrite the outputs of a finished run of the same job id.")
]


def _settings(wait: float) -> Any:
    from vfl.transport.flight import FlightSettings

    return FlightSettings(first_contact=wait)


def _summary_table(outcome: Any) -> Table:
    table = Table(
        title=f"{outcome.kind} job '{outcome.job}' at {outcome.role} '{outcome.party}'", show_header=False
    )
    table.add_column(style="bold")
    table.add_column()
    for key, value in outcome.summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, path in outcome.outputs.items():
        table.add_row(f"output: {key}", str(path))
    return table


def run(
    job: Annotated[
        Path, typer.Argument(metavar="JOB", help="The job file (job.toml), identical at every party.")
    ],
    party: PartyOption,
    federation: FederationOption = None,
    data: DataOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    wait: WaitOption = 600.0,
    force: ForceOption = False,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Discard this party's saved state of the job and start it afresh."),
    ] = False,
) -> None:
    """Run this party's role of a job (psi, train or predict) and write its outputs."""
    from vfl.cli import stdout
    from vfl.parties.runner import run_party

    with ProgressDisplay(quiet) as display:
        outcome = run_party(
            party, job, federation_file=federation, data=data, progress=display, settings=_settings(wait),
            force=force, restart=restart,
        )  # fmt: skip
    stdout().print(_summary_table(outcome))


def predict(
    party: PartyOption,
    model: Annotated[
        str,
        typer.Option("--model", "-m", metavar="JOB_ID", help="Id of the training job whose model to use."),
    ],
    data: DataOption = None,
    job_id: Annotated[
        str | None,
        typer.Option("--job-id", metavar="ID", help="Id of this scoring job (default: predict-<model>)."),
    ] = None,
    federation: FederationOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    wait: WaitOption = 600.0,
    force: ForceOption = False,
) -> None:
    """Score new ids with a trained model (every party runs the same command with its own data)."""
    import tempfile

    from vfl.cli import stdout
    from vfl.config import JobConfig
    from vfl.parties.runner import run_party

    config = JobConfig(id=job_id or f"predict-{model}", kind="predict", predict={"model": model})
    with tempfile.TemporaryDirectory(prefix="vfl-predict-") as tmp:
        job_file = Path(tmp) / "job.toml"
        job_file.write_text(config.to_toml())
        with ProgressDisplay(quiet) as display:
            outcome = run_party(
                party, job_file, federation_file=federation, data=data, progress=display,
                settings=_settings(wait), force=force,
            )  # fmt: skip
    stdout().print(_summary_table(outcome))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a vfl output file (not valid JSON)") from exc


def inspect(
    path: Annotated[Path, typer.Argument(help="A model shard, ledger, metrics file or job output folder.")],
) -> None:
    """Show what a model shard, a leakage ledger or a job's metrics contain."""
    from vfl.cli import stdout

    out = stdout()
    files = sorted(p for p in path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no vfl output files (model.json, ledger.json, metrics.json)")
    for file in files:
        data = _read_json(file)
        if data.get("format", "").startswith("vfl-shard"):
            from vfl.model import ModelShard

            shard = ModelShard.load(file)
            table = Table(title=f"model shard of {shard.role} '{shard.party}' (job {shard.job_id})")
            table.add_column("column")
            table.add_column("weight", justify="right")
            for name, w in zip(shard.columns, shard.weights, strict=True):
                table.add_row(name, f"{w:+.6f}")
            out.print(table)
            out.print(f"digest {shard.digest()[:16]}…; other shards: {shard.peer_digests}")
        elif "never_learns" in data:
            table = Table(title=f"leakage ledger of {data['role']} '{data['party']}' (job {data['job_id']})")
            for col in ("peer", "direction", "messages", "bytes"):
                table.add_column(col, justify="right" if col in ("messages", "bytes") else "left")
            for peer, slots in sorted(data["totals"].items()):
                for direction, v in sorted(slots.items()):
                    table.add_row(peer, direction, str(v["messages"]), f"{v['bytes']:,}")
            out.print(table)
            out.print(f"[bold]may learn:[/] {'; '.join(data['learns'])}", soft_wrap=True)
            out.print(f"[bold]never learns:[/] {'; '.join(data['never_learns'])}", soft_wrap=True)
        elif "metrics" in data:
            table = Table(title=f"metrics ({file})")
            table.add_column("metric")
            table.add_column("value", justify="right")
            for key, value in data["metrics"].items():
                table.add_row(key, f"{value:.4f}")
            out.print(table)
            out.print(f"epochs {data.get('epochs')}; intersection {data.get('intersection_size')}")
        else:
            raise DataError(f"{file} is not a vfl model shard, ledger or metrics file")


def report(
    party: PartyOption,
    job_id: Annotated[str, typer.Option("--job", "-j", metavar="ID", help="The training job to report on.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the HTML report.")
    ] = None,
) -> None:
    """(Re)write the HTML report of a training job at the guest, the same page the run wrote."""
    from vfl.cli import stdout
    from vfl.config import PartyConfig
    from vfl.report import ReportData, write_report

    config = PartyConfig.load(party)
    if config.role != "guest":
        raise ConfigError(f"only the guest has labels and metrics; '{config.id}' is a {config.role}")
    folder = config.output_dir / job_id
    if not (folder / "report.json").exists():
        raise DataError(
            f"{folder / 'report.json'} does not exist: job '{job_id}' has not finished at this party "
            "(or was trained by a vfl without report data; run it again)"
        )
    try:
        data = ReportData.load(folder / "report.json")
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{folder / 'report.json'} is damaged ({exc}); run the job again") from exc
    path = write_report(output or folder / "report.html", data)
    stdout().print(f"report written to [bold]{path}[/]")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("predict")(predict)
    app.command("inspect")(inspect)
    app.command("report")(report)
