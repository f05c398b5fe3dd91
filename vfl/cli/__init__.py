"""The ``vfl`` command line (DESIGN.md §11).

One error policy for every command: a ``VflError`` (a user or peer mistake) prints one red line
``error: <message>`` on stderr and exits with the error's ``exit_code``; Ctrl-C prints one line and
exits 130. A traceback appears only with ``--debug`` (or ``VFL_DEBUG=1``). The policy lives in
``VflGroup.invoke``, so every command registered on ``app`` gets it, sub-groups included.

Importing this module stays cheap: command modules import pandas, pyarrow and the transport
inside the commands that need them.

To add commands, write a module with ``register(app: typer.Typer) -> None`` and list it in
``_COMMAND_MODULES`` at the bottom of this file.
"""

from __future__ import annotations

import os

# gRPC (under pyarrow.flight) logs TLS handshake noise unless told otherwise; must precede its import.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import importlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.text import Text  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from vfl import __version__  # noqa: E402
from vfl.errors import VflError  # noqa: E402

INTERRUPTED_EXIT_CODE = 130
_DEBUG_KEY = "vfl.debug"


def stdout() -> Console:
    """Console for results (resolves ``sys.stdout`` at call time, so test runners capture it)."""
    return Console(highlight=False)


def stderr() -> Console:
    """Console for errors and warnings."""
    return Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    """One red line on stderr, never wrapped, with no markup interpretation of ``message``."""
    stderr().print(Text(f"error: {message}", style="bold red"), soft_wrap=True)


def _debug_enabled(ctx: typer.Context | None = None) -> bool:
    if os.environ.get("VFL_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return bool(ctx is not None and ctx.meta.get(_DEBUG_KEY))


@contextmanager
def cli_errors(ctx: typer.Context | None = None) -> Iterator[None]:
    """Turn a ``VflError`` or Ctrl-C into one line on stderr and a ``typer.Exit`` with its code.

    The traceback is printed too when ``--debug`` was given (read from ``ctx``) or ``VFL_DEBUG=1``.
    Every command already runs inside this (see ``VflGroup``); use it directly only for work
    done outside a command, e.g. in a helper process started by a command.
    """
    try:
        yield
    except VflError as exc:
        if _debug_enabled(ctx):
            traceback.print_exc(file=sys.stderr)
        print_error(str(exc))
        raise typer.Exit(exc.exit_code or 1) from None
    except KeyboardInterrupt:
        stderr().print(Text("interrupted", style="bold red"), soft_wrap=True)
        raise typer.Exit(INTERRUPTED_EXIT_CODE) from None


class VflGroup(TyperGroup):
    """The root command group: runs every sub-command inside ``cli_errors``."""

    def invoke(self, ctx: typer.Context) -> Any:
        with cli_errors(ctx):
            return super().invoke(ctx)


class _CurrentStderrHandler(logging.StreamHandler):
    """A logging handler that writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(debug: bool) -> None:
    if not debug:
        return  # warnings still reach stderr through logging's last-resort handler
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)


def _version(value: bool) -> None:
    if value:
        stdout().print(f"vfl {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="vfl",
    cls=VflGroup,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks and debug logs (also: VFL_DEBUG=1).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Vertical federated learning between organizations.

    Start with [bold]vfl init[/] to create this party's workspace, exchange cards with your
    partners, assemble them with [bold]vfl federation add[/], then [bold]vfl federation check[/].
    """
    ctx.meta[_DEBUG_KEY] = debug
    _configure_logging(debug)


# Each module has register(app).
_COMMAND_MODULES = ("vfl.cli.workspace", "vfl.cli.federation", "vfl.cli.jobs", "vfl.cli.demo")

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)

__all__ = ["INTERRUPTED_EXIT_CODE", "app", "cli_errors", "print_error", "stderr", "stdout"]
