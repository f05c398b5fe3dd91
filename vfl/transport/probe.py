"""Diagnostics for the Flight transport: what a failed connection means, in one line (DESIGN.md §10).

gRPC reports most connection failures as "unavailable" with little detail. ``probe_peer`` opens a
plain TLS connection to a peer's inbox with this party's certificate and tells apart a peer that
is down, a peer presenting another certificate than the pinned one, and a peer that refuses our
certificate (it does not pin us). ``FlightChannel`` uses it to turn a handshake failure into a
clear error, and ``vfl federation check`` to report on every peer.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vfl.errors import TransportError
from vfl.transport.address import format_address, parse_address

# Prefix of the error a vfl inbox returns when it refuses a message, so the sender can show the reason.
REFUSED = "vfl refused the message: "


@dataclass(frozen=True)
class PeerStatus:
    """Result of ``FlightChannel.probe``: can we reach the peer, and do both sides accept each other?"""

    party_id: str
    address: str
    reachable: bool
    presented: str | None = None
    problem: str | None = None
    permanent: bool = field(default=False)

    @property
    def ok(self) -> bool:
        return self.reachable and self.problem is None


class IdentityFiles:
    """The ``ssl`` module reads keys from files: a private 0600 copy of a party's key, removed on ``cleanup``."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self._cert_pem, self._key_pem = cert_pem, key_pem
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def paths(self) -> tuple[str, str]:
        """``(certificate file, key file)``, written on first use."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="vfl-probe-")
            base = Path(self._dir.name)
            for name, data in (("cert.pem", self._cert_pem), ("key.pem", self._key_pem)):
                fd = os.open(base / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
        base = Path(self._dir.name)
        return str(base / "cert.pem"), str(base / "key.pem")

    def cleanup(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def probe_peer(
    *,
    me: str,
    my_fingerprint: str,
    files: IdentityFiles,
    party_id: str,
    address: str,
    pinned: str,
    timeout: float,
) -> PeerStatus:
    """Handshake with peer ``party_id`` at ``address`` (pinned ``pinned``) as party ``me``, and say what went wrong."""
    host, port = parse_address(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we compare the fingerprint ourselves, to report it
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(*files.paths())
    where = f"peer '{party_id}' at {address}"
    try:
        seen, accepted = tls_probe(ctx, host, port, timeout)
    except ssl.SSLEOFError as exc:
        # Closed without a TLS alert: something in front of the peer (a proxy, a restarting
        # server) accepted and hung up. Nothing to fix in the certificates; worth retrying.
        return PeerStatus(
            party_id,
            address,
            reachable=False,
            problem=f"{where} closed the connection during the TLS handshake ({exc.reason or exc}); "
            "check that it is running and listening on that address",
        )
    except ssl.SSLError as exc:
        return PeerStatus(
            party_id,
            address,
            reachable=True,
            problem=f"{where} failed the TLS handshake ({exc.reason or exc}); check its certificate and ours",
            permanent=True,
        )
    except OSError as exc:  # refused, unreachable, unknown host, time-out
        return PeerStatus(
            party_id,
            address,
            reachable=False,
            problem=f"{where} is not reachable ({exc.__class__.__name__}: {exc}); "
            "check that it is running and listening on that address",
        )
    if seen != pinned:
        return PeerStatus(
            party_id,
            address,
            reachable=True,
            presented=seen,
            problem=f"{where} presented certificate {seen}, but the federation pins {pinned} for it; "
            "refusing to talk to it (ask the peer for its current card)",
            permanent=True,
        )
    if not accepted:
        return PeerStatus(
            party_id,
            address,
            reachable=True,
            presented=seen,
            problem=f"{where} refused our certificate ({my_fingerprint}); check that its "
            f"federation file pins that fingerprint for '{me}'",
            permanent=True,
        )
    return PeerStatus(party_id, address, reachable=True, presented=seen)


def tls_probe(ctx: ssl.SSLContext, host: str, port: int, timeout: float) -> tuple[str, bool]:
    """Handshake with a server: ``(fingerprint it presented, whether it kept the connection open)``.

    With TLS 1.3 the client finishes its handshake before the server has checked the client
    certificate, so a refusal shows up as the connection closing on the first read.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True) or b""
        tls.settimeout(timeout)
        try:
            accepted = bool(tls.recv(1))
        except (ssl.SSLError, ConnectionError):
            accepted = False
        except TimeoutError:
            accepted = True  # no refusal within the probe time
        return "sha256:" + hashlib.sha256(der).hexdigest(), accepted


def check_port_free(party: str, host: str, port: int) -> None:
    """``TransportError`` naming the address when ``host:port`` cannot be bound.

    Checked before gRPC tries, because gRPC reports a taken port only as "Server did not start
    properly" (plus a line of its own logging on stderr).
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TransportError(cannot_listen(party, format_address(host, port), reason)) from exc


def cannot_listen(party: str, address: str, reason: str) -> str:
    return (
        f"party '{party}' cannot listen on {address} ({reason}); "
        "the port is in use or the address is not on this machine — choose another listen address"
    )


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (gRPC appends pages of debug context), or its class name."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__


def server_reason(exc: BaseException) -> str:
    """The refusal reason a vfl inbox put in its error, without gRPC's debug context."""
    text = str(exc)
    if REFUSED in text:
        text = text.split(REFUSED, 1)[1]
    return text.split(". Detail:", 1)[0].strip()
