"""The ``vfl`` command line (DESIGN.md §11).

One error policy for every command: a ``VflError`` (a user or peer mistake) prints one red line
``error: <message>`` on stderr and exits with the error's ``exit_code``; Ctrl-C prints one line and
exits 130. A traceback appears only with ``--debug`` (or ``VFL_DEBUG=1``). A usage error (an
unknown option or command, a missing or invalid argument) is one line too,
``error: <message> (see 'vfl <command> --help')``, with exit code 2, instead of click's boxed
usage text. The policy lives in ``VflGroup`` (``make_context`` for the root's own options,
``invoke`` for everything below it), so every command registered on ``app`` gets it, sub-groups
included; ``--help`` and the help shown for a bare group are untouched.

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


def _click_class(name: str) -> type[Exception]:
    """click's exception class ``name`` as typer raises it (recent typer vendors its own click)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name:
            return cls
    raise ImportError(f"typer.BadParameter does not derive from click's {name}")  # pragma: no cover


_ClickException = _click_class("ClickException")
_UsageError = _click_class("UsageError")


def _command_words(root: Any) -> list[str]:
    """The sub-command names the root context is about to run (``['federation', 'add']``).

    Read before ``Group.invoke``, which consumes the arguments.
    """
    args = [*getattr(root, "_protected_args", getattr(root, "protected_args", [])), *root.args]
    words: list[str] = []
    command = root.command
    for arg in args:
        sub = command.get_command(root, arg) if hasattr(command, "get_command") else None
        if sub is None:
            break
        words.append(arg)
        command = sub
    return words


def usage_error_line(exc: Exception, words: list[str] | None = None) -> str:
    """``<message> (see 'vfl <command> --help')`` for a click usage error, on one line.

    click raises a few parser errors ("option requires an argument") without a context; then
    ``words`` (from ``_command_words``) names the command.
    """
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    # the root's name in command_path is whatever the runner called it: always say 'vfl'
    words = ctx.command_path.split()[1:] if ctx is not None else (words or [])
    return f"{message} (see '{' '.join(['vfl', *words])} --help')"


@contextmanager
def _usage_errors(words: list[str] | None = None) -> Iterator[None]:
    """A click usage error becomes one ``error:`` line and exit code 2; other click errors one line."""
    try:
        yield
    except _UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group prints its help: keep that
            raise
        print_error(usage_error_line(exc, words))
        raise typer.Exit(getattr(exc, "exit_code", 2) or 2) from None
    except _ClickException as exc:  # e.g. a file argument that cannot be opened
        print_error(" ".join(exc.format_message().split()))  # type: ignore[attr-defined]
        raise typer.Exit(getattr(exc, "exit_code", 1) or 1) from None


class VflGroup(TyperGroup):
    """The root command group: runs every sub-command inside ``cli_errors`` and one-line usage errors."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors():  # the root's own options: ``vfl --bogus``
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        with _usage_errors(_command_words(ctx)), cli_errors(ctx):
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
_COMMAND_MODULES = (
    "vfl.cli.workspace",
    "vfl.cli.federation",
    "vfl.cli.jobs",
    "vfl.cli.demo",
    "vfl.cli.serve",
    "vfl.cli.info",
    "vfl.cli.budget",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)

__all__ = ["INTERRUPTED_EXIT_CODE", "app", "cli_errors", "print_error", "stderr", "stdout"]
