"""``vfl budget``: the privacy budget a party has spent with each partner (audience jobs, DESIGN.md §13)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

PartyOption = Annotated[
    Path, typer.Option("--party", "-p", metavar="DIR", help="This party's workspace (made by 'vfl init').")
]


def budget(
    party: PartyOption,
    entries: Annotated[bool, typer.Option("--entries", help="Also list every job's reservation.")] = False,
    release: Annotated[
        str | None,
        typer.Option(
            "--release",
            metavar="JOB_ID",
            help="Give back the open (not committed) reservation of a job that is known to have released nothing.",
        ),
    ] = None,
) -> None:
    """Show the epsilon spent with each partner against the caps of party.toml's [budget]."""
    from vfl.cli import stdout
    from vfl.config import PartyConfig
    from vfl.parties.common import open_budget

    config = PartyConfig.load(party)
    out = stdout()
    with open_budget(config.workspace, config.budget) as ledger:
        if release is not None:
            changed = ledger.release(release)
            out.print(f"released {changed} open reservation(s) of job {release}", soft_wrap=True)
        table = Table(title=f"privacy budget of '{config.id}' ({ledger.path})")
        for column in ("partner", "spent", "open", "cap", "period", "left"):
            table.add_column(column, justify="left" if column in ("partner", "period") else "right")
        rows = ledger.summary()
        for row in rows:
            table.add_row(
                row["partner"], f"{row['spent']:g}", f"{row['reserved']:g}", f"{row['cap']:g}", row["period"],
                f"{row['remaining']:g}",
            )  # fmt: skip
        out.print(table)
        if not rows:
            cap = ledger.cap("*")
            out.print(
                f"nothing spent yet; the cap for any partner is {cap.epsilon:g} per {cap.period or 'all'}"
            )
        if entries:
            listing = Table(title="reservations")
            for column in ("job", "partner", "epsilon", "state"):
                listing.add_column(column)
            for e in ledger.entries():
                listing.add_row(e.job_id, e.partner, f"{e.epsilon:g}", e.state)
            out.print(listing)


def register(app: typer.Typer) -> None:
    app.command("budget")(budget)
