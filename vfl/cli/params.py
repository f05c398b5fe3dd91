"""One-line option declarations for the CLI commands: ``option("--file,-f", "FILE", "help")``."""

from __future__ import annotations

from typing import Any

import typer


def option(flags: str, metavar: str | None, text: str, **more: Any) -> Any:
    """A ``typer.Option`` from its comma-separated flags, its metavar and its help line."""
    return typer.Option(*flags.split(","), metavar=metavar, help=text, show_default=False, **more)


def file_option(text: str) -> Any:
    """``--file / -f FILE``: the federation file a command reads or writes."""
    return option("--file,-f", "FILE", text)


__all__ = ["file_option", "option"]
