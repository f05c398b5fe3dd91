"""``vfl init``: create a party workspace (party.toml, key and certificate, output dir, card).

Everything the user typed is checked before anything is written, so a mistake leaves no
half-made workspace behind. The data file is checked by reading only its header.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from vfl.config import PartyConfig, PeerCard, parse_address
from vfl.errors import ConfigError, DataError

WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
WORKSPACE_FILES = ("party.toml", "tls/key.pem", "tls/cert.pem", "card.toml")


class Role(str, Enum):
    guest = "guest"
    host = "host"
    arbiter = "arbiter"


@dataclass(frozen=True)
class DataSpec:
    """The data options of ``vfl init``, before they are checked."""

    path: Path | None
    id_column: str
    label_column: str | None
    columns: list[str] | None
    positive: str | None = None  # the label value that is the positive class (needed unless 0/1 or boolean)


def parse_columns(text: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None or empty -> None (offer every feature column)."""
    if text is None:
        return None
    columns = [c.strip() for c in text.split(",") if c.strip()]
    return columns or None


def check_party_id(party_id: str) -> None:
    if not party_id or any(c in party_id for c in "/\\ :"):
        raise ConfigError(f"--id {party_id!r} must be non-empty, without spaces, slashes or colons")


def card_address(listen: str, advertise: str | None) -> str:
    """The address partners connect to: ``--advertise``, or ``--listen`` when it names one host."""
    host, _ = parse_address(listen, "--listen")
    if advertise is not None:
        parse_address(advertise, "--advertise")
        return advertise
    if host in WILDCARD_HOSTS:
        raise ConfigError(
            f"--listen {listen} listens on every interface; add --advertise HOST:PORT, "
            "the address your partners connect to"
        )
    return listen


def read_header(path: Path) -> list[str]:
    """Column names of a CSV or Parquet file, reading only its header (or Parquet schema)."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the --data path")
    if not path.is_file():
        raise DataError(f"data path {path} is not a file; give a CSV or Parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if suffix in (".csv", ".txt", ".tsv"):
            import pandas as pd

            frame = pd.read_csv(path, nrows=0, sep="\t" if suffix == ".tsv" else ",")
            return [str(c) for c in frame.columns]
    except Exception as exc:  # any reader failure is a damaged or wrong file, reported in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "No columns to parse" in first:
            raise DataError(f"data file {path} is empty; it needs a header row") from exc
        raise DataError(f"data file {path} could not be read: {first}") from exc
    raise DataError(f"data file {path} has an unknown type '{suffix}'; use .csv or .parquet")


def _present(header: list[str]) -> str:
    shown = ", ".join(header[:30])
    return shown + (f", ... ({len(header)} in all)" if len(header) > 30 else "")


def check_data(role: str, spec: DataSpec) -> DataSpec:
    """Check the data options against the role and the file's header; return them with an absolute path."""
    if role == "arbiter":
        given = [
            flag
            for flag, value in (
                ("--data", spec.path),
                ("--label-column", spec.label_column),
                ("--columns", spec.columns),
                ("--positive", spec.positive),
            )
            if value
        ]
        if given:
            raise ConfigError(f"an arbiter holds no data; drop {', '.join(given)}")
        return DataSpec(None, spec.id_column, None, None)
    if spec.path is None:
        need = "--data and --label-column" if role == "guest" else "--data"
        raise ConfigError(f"a {role} needs its data: give {need}")
    if role == "guest" and not spec.label_column:
        raise ConfigError("a guest holds the labels: give --label-column (the name of the label column)")
    if role == "host" and (spec.label_column or spec.positive):
        raise ConfigError("only the guest holds labels; drop --label-column and --positive for a host")
    path = spec.path.expanduser().resolve()
    header = read_header(path)
    if spec.id_column not in header:
        raise DataError(
            f"data file {path} has no id column '{spec.id_column}'; its columns are: {_present(header)} "
            "(choose one with --id-column)"
        )
    if spec.label_column and spec.label_column not in header:
        raise DataError(
            f"data file {path} has no label column '{spec.label_column}'; its columns are: {_present(header)}"
        )
    if spec.label_column == spec.id_column:
        raise ConfigError(f"--label-column and --id-column are both '{spec.id_column}'")
    if spec.columns:
        missing = [c for c in spec.columns if c not in header]
        if missing:
            raise DataError(
                f"data file {path} has no column(s) {', '.join(repr(c) for c in missing)} given in --columns; "
                f"its columns are: {_present(header)}"
            )
        reserved = [c for c in spec.columns if c in (spec.id_column, spec.label_column)]
        if reserved:
            raise ConfigError(
                f"--columns lists {', '.join(repr(c) for c in reserved)}: the id and label columns are not features"
            )
    return DataSpec(path, spec.id_column, spec.label_column, spec.columns, spec.positive)


def check_target(workspace: Path, force: bool) -> None:
    """Refuse to overwrite an existing workspace (its certificate is pinned by partners) unless forced."""
    if workspace.exists() and not workspace.is_dir():
        raise ConfigError(f"{workspace} exists and is not a directory")
    existing = [name for name in WORKSPACE_FILES if (workspace / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{workspace} is already a workspace ({', '.join(existing)}); use --force to replace it "
            "(this makes a new certificate: partners must add your new card)"
        )


def create_workspace(
    workspace: Path,
    *,
    party_id: str,
    role: str,
    listen: str,
    advertise: str | None = None,
    data: DataSpec | None = None,
    force: bool = False,
) -> tuple[PartyConfig, PeerCard, Path]:
    """Create a party workspace; return its config, its card and the path of ``card.toml``.

    Checks every option first, then writes ``party.toml``, ``tls/key.pem`` (0600) and
    ``tls/cert.pem``, the output directory and ``card.toml``. Also used by ``vfl demo``.
    """
    from vfl.transport.tls import create_identity

    check_party_id(party_id)
    if role not in Role.__members__:
        raise ConfigError(f"--role must be guest, host or arbiter, got {role!r}")
    address = card_address(listen, advertise)
    spec = check_data(role, data or DataSpec(None, "id", None, None))
    workspace = workspace.expanduser().resolve()
    check_target(workspace, force)

    tls_dir = workspace / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    party = PartyConfig(
        workspace=workspace,
        id=party_id,
        role=role,
        listen=listen,
        key=tls_dir / "key.pem",
        certificate=tls_dir / "cert.pem",
        output_dir=workspace / "out",
        data=spec.path,
        id_column=spec.id_column,
        label_column=spec.label_column,
        columns=spec.columns,
        positive=spec.positive,
    )
    hosts = [parse_address(listen, "--listen")[0], parse_address(address, "address")[0]]
    identity = create_identity(party_id, party.key, party.certificate, hosts=hosts, overwrite=force)
    party.output_dir.mkdir(parents=True, exist_ok=True)
    party.save()
    PartyConfig.load(workspace)  # what we wrote must load back
    card = PeerCard(
        id=party_id,
        role=role,
        address=address,
        fingerprint=identity.fingerprint,
        certificate=identity.cert_pem.decode(),
    )
    from vfl.io import atomic_write_text

    card_path = atomic_write_text(workspace / "card.toml", card.to_toml())
    return party, card, card_path


def show_card(party: PartyConfig, card: PeerCard, card_path: Path) -> None:
    """Print the new workspace and the card partners need."""
    from vfl.cli import stdout

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("party", card.id)
    grid.add_row("role", card.role)
    grid.add_row("address", card.address)
    grid.add_row("fingerprint", card.fingerprint)
    if party.data is not None:
        grid.add_row("data", str(party.data))
    grid.add_row("workspace", str(party.workspace))
    grid.add_row("card", str(card_path))
    out = stdout()
    out.print(Panel(grid, title=f"vfl workspace for '{card.id}'", expand=False))
    out.print(
        f"Send [bold]{card_path}[/] to your partners and check the fingerprint with each of them out of band; "
        f"then every party adds all the cards, in the same order, with [bold]vfl federation add CARD... "
        f"--party DIR[/] (README, step 3).",
        soft_wrap=True,
    )


def init(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Workspace directory to create.", show_default=False)
    ],
    party_id: Annotated[
        str, typer.Option("--id", metavar="ID", help="This party's id, e.g. 'bank'.", show_default=False)
    ],
    role: Annotated[Role, typer.Option("--role", help="This party's role.", case_sensitive=False)],
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="HOST:PORT this party's inbox listens on, e.g. 0.0.0.0:7470.",
            show_default=False,
        ),
    ],
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise", metavar="HOST:PORT", help="HOST:PORT partners connect to (default: --listen)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", metavar="PATH", help="CSV or Parquet file with this party's rows (guest and host)."
        ),
    ] = None,
    id_column: Annotated[
        str, typer.Option("--id-column", metavar="NAME", help="Column holding the join ids.")
    ] = "id",
    label_column: Annotated[
        str | None,
        typer.Option("--label-column", metavar="NAME", help="Column holding the labels (guest only)."),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            "--columns",
            metavar="A,B,C",
            help="Comma-separated feature columns offered to jobs (default: all but id and label).",
        ),
    ] = None,
    positive: Annotated[
        str | None,
        typer.Option(
            "--positive",
            metavar="VALUE",
            help="The label value that is the positive class (guest; needed unless the labels are 0/1).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing workspace (new certificate).")
    ] = False,
) -> None:
    """Create a party workspace: [bold]party.toml[/], key and certificate, and the card to share."""
    spec = DataSpec(data, id_column, label_column, parse_columns(columns), positive)
    party, card, card_path = create_workspace(
        directory,
        party_id=party_id,
        role=role.value,
        listen=listen,
        advertise=advertise,
        data=spec,
        force=force,
    )
    show_card(party, card, card_path)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
