"""``vfl info --party DIR``: this party's compute backend (local pool or Dask cluster), workers and cores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

PartyOption = Annotated[
    Path, typer.Option("--party", "-p", metavar="DIR", help="This party's workspace (made by 'vfl init').")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", metavar="SECONDS", help="How long to wait for a Dask scheduler.")
]


def info(party: PartyOption, timeout: TimeoutOption = 10.0) -> None:
    """Show this party's compute backend: where its heavy work runs, with how many workers and cores."""
    from vfl.cli import stdout
    from vfl.compute import describe, open_backend
    from vfl.config import PartyConfig

    config = PartyConfig.load(party)
    where = f"{config.workspace / 'party.toml'} [compute] backend"
    with open_backend(
        config.compute, workers=config.compute_workers, connect_timeout=timeout, where=where
    ) as backend:
        described = describe(backend)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("party", f"{config.id} ({config.role})")
    table.add_row("backend", described.address or described.kind)
    table.add_row("workers", str(described.workers))
    table.add_row("cores", str(described.cores))
    for key, value in described.details.items():
        table.add_row(key, str(value))
    if config.data is not None:
        table.add_row("data", str(config.data))
    stdout().print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
