"""``vfl serve``, ``vfl submit``, ``vfl score``, ``vfl health`` and ``vfl jobs list | show | approve |
cancel | logs``: a party as a long-running service, and the commands that control it.

``jobs`` commands read and change the local job store (``<workspace>/jobs.db``); ``cancel`` also
tells every other party's service, so the job stops everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from vfl.cli.jobs import FederationOption, PartyOption, ProgressDisplay, _summary_table
from vfl.cli.params import option
from vfl.errors import ConfigError

jobs_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="The jobs this party's service knows (local job store).",
)


def _job_ports(text: str | None) -> range | None:
    if text is None:
        return None
    try:
        low, _, high = text.partition("-")
        start, end = int(low), int(high or low)
    except ValueError:
        raise ConfigError(f"--job-ports must be START-END (e.g. 9100-9199), got {text!r}") from None
    if not 0 < start <= end < 65536:
        raise ConfigError(f"--job-ports must be START-END within 1-65535, got {text!r}")
    return range(start, end + 1)


def serve(
    party: PartyOption,
    federation: FederationOption = None,
    job_ports: Annotated[
        str | None, option("--job-ports", "START-END", "Ports for job inboxes (default: any free).")
    ] = None,
    health_port: Annotated[
        int | None, option("--health-port", "PORT", "Serve GET /health on 127.0.0.1:PORT (0: any).")
    ] = None,
    grace: Annotated[
        float, option("--grace", "SECONDS", "On SIGTERM, let running jobs finish this long.")
    ] = 30.0,
    models: Annotated[
        int, option("--models", "N", "Trained models kept loaded for scoring (0: none).", min=0)
    ] = 4,
) -> None:
    """Run this party as a service: accept jobs from pinned partners under its policy, until SIGTERM."""
    from vfl.cli import stderr
    from vfl.parties.service import PartyService

    service = PartyService(
        party,
        federation_file=federation,
        job_ports=_job_ports(job_ports),
        health_port=health_port,
        grace=grace,
        models_kept=models,
    )
    stderr().print(
        f"serving party '{service.party.id}' ({service.party.role}) on {service.party.listen}; "
        f"log {service.workspace / 'logs' / 'vfl.log'}",
        soft_wrap=True,
    )
    service.serve()


def submit(
    job: Annotated[Path, typer.Argument(metavar="JOB", help="The job file (job.toml).")],
    party: PartyOption,
    federation: FederationOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """At the guest: propose a job to every party's service, wait for approvals, run it with progress."""
    from vfl.cli import stderr, stdout
    from vfl.parties.control import submit_job

    def waiting(peer: str, message: str) -> None:
        stderr().print(Text(message, style="yellow"), soft_wrap=True)

    with ProgressDisplay(quiet) as display:
        outcome = submit_job(party, job, federation_file=federation, progress=display, on_wait=waiting)
    stdout().print(_summary_table(outcome))


def score(
    ids: Annotated[Path, typer.Argument(metavar="IDS", help="CSV or Parquet file of ids to score.")],
    party: PartyOption,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", metavar="JOB_ID", help="Training job (default: the latest)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Score file (default: out/<job>/scores.csv)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """At the guest: score new ids with a trained model and the hosts' serving shards."""
    from vfl.cli import stdout
    from vfl.parties.control import score_ids

    with ProgressDisplay(quiet) as display:
        path, outcome = score_ids(party, ids, model=model, output=output, progress=display)
    stdout().print(f"scores of job '{outcome.job}' written to [bold]{path}[/]")


def health(
    target: Annotated[
        str | None, typer.Argument(metavar="[PORT|URL]", help="The health endpoint (default: the party's).")
    ] = None,
    party: Annotated[
        Path | None, typer.Option("--party", "-p", metavar="DIR", help="Probe this workspace's service.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS")] = 5.0,
) -> None:
    """Probe a service's /health endpoint: exit code 0 when healthy, 1 when not (for systemd, Docker, k8s)."""
    from vfl.cli import stdout
    from vfl.parties.service import service_info_path
    from vfl.service.health import probe

    if target is None:
        if party is None:
            raise ConfigError("give the health endpoint (PORT or URL) or --party DIR")
        try:
            info = json.loads(service_info_path(party).read_text())
        except (OSError, ValueError):
            stdout().print(f"unhealthy: no service runs for {party}")
            raise typer.Exit(1) from None
        target = info.get("health")
        if not target:
            stdout().print(f"unhealthy: the service of {party} runs without --health-port")
            raise typer.Exit(1)
    code = probe(target, timeout=timeout, report=lambda line: stdout().print(line, soft_wrap=True))
    raise typer.Exit(code)


def _when(t: float | None) -> str:
    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _store(party: Path):  # noqa: ANN202
    from vfl.config import PartyConfig
    from vfl.service.store import JobStore

    PartyConfig.load(party)
    return JobStore.for_workspace(party)


def jobs_list(
    party: PartyOption,
    state: Annotated[list[str] | None, typer.Option("--state", help="Only jobs in this state.")] = None,
) -> None:
    """List this party's jobs, oldest first."""
    from vfl.cli import stdout

    with _store(party) as store:
        records = store.list(state or None)
    table = Table(title=f"jobs of {party}", title_justify="left")
    for col in ("job", "kind", "state", "proposer", "created", "ended", "outcome"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(r.id, r.kind, r.state, r.proposer, _when(r.created), _when(r.ended), r.outcome)
    stdout().print(table)


def jobs_show(party: PartyOption, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show one job's record: state, proposer, options digest, times, outcome, outputs."""
    from vfl.cli import stdout

    with _store(party) as store:
        r = store.get(job_id)
    table = Table(title=f"job '{r.id}'", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("kind", r.kind), ("state", r.state), ("proposer", r.proposer), ("options digest", r.options_digest),
        ("created", _when(r.created)), ("started", _when(r.started)), ("ended", _when(r.ended)),
        ("outcome", r.outcome), ("worker pid", str(r.pid or "-")), ("outputs", "\n".join(r.outputs) or "-"),
    ]  # fmt: skip
    for k, v in rows:
        table.add_row(k, v)
    stdout().print(table)


def jobs_approve(party: PartyOption, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Approve a job the policy queued for approval (the guest then starts it)."""
    from vfl.cli import stdout

    with _store(party) as store:
        r = store.approve(job_id)
    stdout().print(f"job '{r.id}' approved; it starts when the proposer '{r.proposer}' has every approval")


def jobs_cancel(party: PartyOption, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Cancel a job here and at every other party (running jobs stop and leave no outputs)."""
    from vfl.cli import stdout
    from vfl.parties.control import cancel_job

    answers = cancel_job(party, job_id)
    for peer, state in answers.items():
        stdout().print(f"{peer}: {state}", soft_wrap=True)


def jobs_refused(
    party: PartyOption, limit: Annotated[int, typer.Option("--lines", "-n", min=1)] = 20
) -> None:
    """Control calls the service refused before any other work (unpinned certificate, forged signature)."""
    from vfl.cli import stdout

    with _store(party) as store:
        calls = store.refused_calls(limit)
    table = Table(title=f"refused calls at {party} (newest first)", title_justify="left")
    for col in ("when", "claimed sender", "call", "certificate", "reason"):
        table.add_column(col, overflow="fold")
    for c in calls:
        table.add_row(_when(c.at), c.claimed, c.tag, c.fingerprint or "(none)", c.reason)
    stdout().print(table)


def jobs_logs(
    party: PartyOption,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    lines: Annotated[int, typer.Option("--lines", "-n", min=1)] = 50,
) -> None:
    """Show the end of a job's log."""
    from vfl.cli import stdout
    from vfl.service.logs import job_log_tail

    for line in job_log_tail(party, job_id, lines):
        stdout().print(line, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("submit")(submit)
    app.command("score")(score)
    app.command("health")(health)
    jobs_app.command("list")(jobs_list)
    jobs_app.command("show")(jobs_show)
    jobs_app.command("approve")(jobs_approve)
    jobs_app.command("cancel")(jobs_cancel)
    jobs_app.command("logs")(jobs_logs)
    jobs_app.command("refused")(jobs_refused)
    app.add_typer(jobs_app, name="jobs")
