"""``vfl federation add | show | check``: assemble the federation file from cards and test it.

``add`` checks each card's certificate against its pin before accepting it; ``check`` opens a
short-lived channel with this party's identity and probes every other party over mutual TLS,
telling a peer that is down from one presenting another certificate from one that does not pin us.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vfl.cli.params import file_option, option
from vfl.config import Federation
from vfl.errors import ConfigError, TransportError, VflError

if TYPE_CHECKING:
    from vfl.transport.flight import PeerStatus

DEFAULT_FILE = Path("federation.toml")
NOT_PINNED = "is not pinned by this party"  # a service's refusal of a caller's certificate (transport/rpc.py)

federation_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Assemble the federation file from partners' cards and check every peer.",
)


def load_federation(path: Path) -> Federation:
    """The federation file, with a hint on how to create it when it is missing."""
    if not path.exists():
        raise ConfigError(
            f"federation file {path} does not exist; create it with 'vfl federation add CARD...'"
        )
    return Federation.load(path)


def federation_table(federation: Federation, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("party", style="bold", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("fingerprint", overflow="fold")
    for card in federation.parties:
        table.add_row(escape(card.id), card.role, escape(card.address), card.fingerprint)
    return table


def add(
    cards: Annotated[
        list[Path],
        typer.Argument(metavar="CARD", help="Card files (card.toml) made by 'vfl init'.", show_default=False),
    ],
    file: Annotated[
        Path | None, file_option("Federation file to create or update (default: ./federation.toml).")
    ] = None,
    party: Annotated[
        Path | None,
        option("--party,-p", "DIR", "Update DIR/federation.toml, the file 'vfl run --party DIR' reads."),
    ] = None,
) -> None:
    """Add partners' cards to the federation file (a card with the same id replaces the old one)."""
    from vfl.cli import stdout
    from vfl.config import PeerCard
    from vfl.parties.network import check_card

    if file is not None and party is not None:
        raise ConfigError("give either --file or --party, not both")
    file = file or (party / "federation.toml" if party is not None else DEFAULT_FILE)
    federation = load_federation(file) if file.exists() else Federation()
    for path in cards:
        card = check_card(PeerCard.load(path), f"card {path}")
        federation.add(card)
    federation.validate(str(file))
    federation.save(file)
    stdout().print(federation_table(federation, f"{file} ({len(federation.parties)} parties)"))


def show(
    file: Annotated[Path, file_option("Federation file to show.")] = DEFAULT_FILE,
) -> None:
    """Show the parties of a federation file."""
    from vfl.cli import stdout

    federation = load_federation(file)
    stdout().print(federation_table(federation, f"{file} ({len(federation.parties)} parties)"))


def _certificate_cell(presented: str | None, pinned: str) -> Text:
    if presented is None:
        return Text("-", style="dim")
    if presented == pinned:
        return Text("matches", style="green")
    return Text("MISMATCH", style="red")


def _verdict(status: PeerStatus, pinned: str) -> Text:
    """A short word for the table; the full explanation is printed below it."""
    if status.ok:
        return Text("ok", style="green")
    if not status.reachable:
        return Text("down", style="red")
    if status.presented is not None and status.presented != pinned:
        return Text("wrong certificate", style="red")
    if status.presented is not None:
        return Text("does not pin us", style="red")
    return Text("TLS failed", style="red")


def check(
    party_dir: Annotated[Path, option("--party,-p", "DIR", "This party's workspace (made by 'vfl init').")],
    file: Annotated[Path | None, file_option("Federation file (default: DIR/federation.toml).")] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, metavar="SECONDS", help="Seconds to wait for each peer.")
    ] = 3.0,
) -> None:
    """Connect to every other party and report who is reachable and whose certificate matches."""
    from vfl.cli import stdout
    from vfl.config import PartyConfig
    from vfl.parties.network import load_party_identity, open_channel, verify_membership
    from vfl.transport.flight import FlightSettings
    from vfl.transport.tls import normalize_fingerprint

    party = PartyConfig.load(party_dir)
    path = file if file is not None else party.workspace / "federation.toml"
    federation = load_federation(path)
    verify_membership(party, federation, load_party_identity(party), str(path))
    settings = FlightSettings(probe_timeout=timeout, connect_deadline=timeout)
    job_id = f"federation-check-{secrets.token_hex(4)}"
    with open_channel(
        party, federation, job_id=job_id, settings=settings, listen="127.0.0.1:0", where=str(path)
    ) as channel:
        statuses = [channel.probe(peer) for peer in channel.peers]
    services = _service_reports(party_dir, [s.party_id for s in statuses if s.ok], timeout)

    table = Table(
        title=f"'{party.id}' ({party.role}) checking {path}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("party", style="bold", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("reachable", no_wrap=True)
    table.add_column("certificate", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for status in statuses:
        card = federation.get(status.party_id)
        pinned = normalize_fingerprint(card.fingerprint)
        table.add_row(
            escape(status.party_id),
            card.role,
            escape(status.address),
            Text("yes", style="green") if status.reachable else Text("no", style="red"),
            _certificate_cell(status.presented, pinned),
            _verdict(status, pinned),
        )
    out = stdout()
    out.print(table)
    if services:
        served = Table(
            title="party services ('vfl serve')", title_justify="left", box=box.SIMPLE_HEAD,
            show_edge=False, pad_edge=False,
        )  # fmt: skip
        served.add_column("party", style="bold", no_wrap=True)
        served.add_column("service", no_wrap=True)
        served.add_column("accepts from us")
        for peer, report in services.items():
            served.add_row(escape(peer), *_service_cells(report))
        out.print(served)
    problems = {s.party_id: s.problem for s in statuses if not s.ok}
    # a service checks our pin itself (its TLS does not), so only its answer tells that it does not pin us
    problems.update({p: r for p, r in services.items() if isinstance(r, str) and NOT_PINNED in r})
    for peer, problem in problems.items():
        out.print(Text(f"- {peer}: {problem}", style="red"), soft_wrap=True)
    failed = list(problems)
    if failed:
        raise TransportError(
            f"{len(failed)} of {len(statuses)} peer(s) failed the check: {', '.join(failed)} (see the table above)"
        )
    out.print(Text(f"all {len(statuses)} peer(s) reachable with the pinned certificates", style="green"))


def _service_reports(party_dir: Path, peers: list[str], timeout: float) -> dict[str, object]:
    """What each reachable peer's ``vfl serve`` says (version, kinds its policy accepts from us)."""
    if not peers:
        return {}
    from vfl.parties.control import service_reports

    try:
        reports = service_reports(party_dir, timeout=timeout)
    except VflError as exc:
        return {p: str(exc) for p in peers}
    return {p: r for p, r in reports.items() if p in peers}


def _service_cells(report: object) -> tuple[Text, Text]:
    if report is None:
        return Text("-", style="dim"), Text("-", style="dim")
    if isinstance(report, str) and NOT_PINNED in report:
        return Text("does not pin us", style="red"), Text("-", style="dim")
    if isinstance(report, str):
        word = "not serving" if "not serving" in report or "did not answer" in report else "error"
        return Text(word, style="dim"), Text("-", style="dim")
    kinds = ", ".join(f"{k} ({mode})" for k, mode in report.kinds.items()) or "nothing"
    return Text(f"vfl {report.version}", style="green"), Text(kinds)


def register(app: typer.Typer) -> None:
    federation_app.command("add")(add)
    federation_app.command("show")(show)
    federation_app.command("check")(check)
    app.add_typer(federation_app, name="federation")
