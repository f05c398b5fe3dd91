"""Network addresses: the one parser every ``host:port`` in vfl goes through (DESIGN.md §10).

Rules, the same for ``party.toml``'s ``listen``, a federation card's ``address``, the ``--listen`` and
``--advertise`` options and the transport itself:

* ``HOST:PORT`` or ``[IPv6]:PORT``; surrounding spaces are ignored, spaces inside are not allowed;
* the host is not empty, and an IPv6 host is in brackets (``[::1]:7470``, not ``::1:7470``);
* the port is a decimal number from 0 to 65535 (0 asks the system for a free port when listening).

This module imports nothing heavy, so configuration code can use it without loading pyarrow.
"""

from __future__ import annotations

from vfl.errors import ConfigError

EXAMPLE = "127.0.0.1:7470"


def parse_address(text: str, where: str | None = None) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``; a one-line ``ConfigError`` naming ``where``."""

    def bad(why: str) -> ConfigError:
        prefix = f"{where}: " if where else ""
        return ConfigError(
            f"{prefix}address {text!r} must look like HOST:PORT or [IPv6]:PORT, e.g. {EXAMPLE} ({why})"
        )

    if not isinstance(text, str):
        raise bad("not a string")
    stripped = text.strip()
    if not stripped:
        raise bad("it is empty")
    if any(c.isspace() for c in stripped):
        raise bad("it contains a space")
    if stripped.startswith("["):
        close = stripped.find("]")
        if close < 0:
            raise bad("the '[' of the IPv6 host is not closed")
        host, rest = stripped[1:close], stripped[close + 1 :]
        if not host:
            raise bad("the host is empty")
        if ":" not in host:
            raise bad("brackets are only for IPv6 hosts")
        if not rest.startswith(":"):
            raise bad("the port is missing")
        port_text = rest[1:]
    else:
        host, sep, port_text = stripped.rpartition(":")
        if not sep:
            raise bad("the port is missing")
        if not host:
            raise bad("the host is empty")
        if ":" in host:
            raise bad("an IPv6 host must be in brackets")
        if "[" in host or "]" in host:
            raise bad("unbalanced brackets")
    if not port_text:
        raise bad("the port is missing")
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise bad(f"port {port} is out of range 0..65535")
    return host, port


def format_address(host: str, port: int) -> str:
    """The inverse of ``parse_address``: IPv6 hosts get brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
