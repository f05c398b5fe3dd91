"""What a ``FlightChannel`` is configured with: its pinned ``Peer``s and its ``FlightSettings`` (DESIGN.md §10).

Both are importable from ``vfl.transport.flight`` as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from vfl.errors import ConfigError, KeyFileError
from vfl.transport.envelope import MiB
from vfl.transport.retry import RetryPolicy
from vfl.transport.tls import (
    certificate_party_id,
    check_validity,
    fingerprint,
    load_certificate,
    normalize_fingerprint,
    party_dns_name,
)


@dataclass(frozen=True)
class Peer:
    """Another party of the federation, as the federation file describes it.

    ``certificate`` is the peer's certificate as PEM (``bytes``, or ``str`` starting with
    ``-----BEGIN``) or the path of a PEM file; ``fingerprint`` is the pinned ``sha256:...`` value
    it must match. ``address`` is where the peer's inbox listens (``host:port``).
    """

    party_id: str
    role: str
    address: str
    certificate: bytes | str | os.PathLike[str]
    fingerprint: str

    def load_certificate(self) -> x509.Certificate:
        """The peer's certificate, checked against the pin, the party id, and its validity dates."""
        source = self.certificate
        if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
            source = source.encode()
        try:
            cert = load_certificate(source)
        except KeyFileError as exc:
            raise KeyFileError(f"peer '{self.party_id}': {exc}") from exc
        pinned = normalize_fingerprint(self.fingerprint)
        actual = fingerprint(cert)
        if actual != pinned:
            raise KeyFileError(
                f"the certificate given for peer '{self.party_id}' has fingerprint {actual}, but the federation "
                f"pins {pinned}; get the peer's current card and update the federation file"
            )
        cn = certificate_party_id(cert)
        if cn != self.party_id:
            raise KeyFileError(f"the certificate pinned for peer '{self.party_id}' belongs to party '{cn}'")
        check_validity(cert, f"the certificate of peer '{self.party_id}'")
        try:
            san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
            names = san.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        if not names or names[0] != party_dns_name(self.party_id):
            raise KeyFileError(
                f"the certificate of peer '{self.party_id}' was not made by 'vfl init' "
                f"(its first SubjectAltName must be {party_dns_name(self.party_id)})"
            )
        return cert


@dataclass(frozen=True)
class FlightSettings:
    """Time-outs, retries and limits of a ``FlightChannel``.

    ``first_contact`` bounds how long ``send`` keeps retrying a peer that has *never* answered this
    channel (it may not have started yet); once it has answered, ``connect_deadline`` bounds the
    retries of an unreachable peer. Back-off goes from ``initial_backoff`` doubling up to
    ``max_backoff`` (see ``retry_policy``); ``call_timeout`` bounds one transfer attempt.
    ``max_message_bytes`` applies to sending and receiving and should be the same at every party.
    """

    connect_deadline: float = 30.0
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    call_timeout: float = 300.0
    max_message_bytes: int = 512 * MiB
    chunk_bytes: int = 4 * MiB
    probe_timeout: float = 3.0
    linger_on_error: float = 2.0
    first_contact: float = 600.0

    def __post_init__(self) -> None:
        for name in (
            "connect_deadline",
            "initial_backoff",
            "max_backoff",
            "call_timeout",
            "probe_timeout",
            "first_contact",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"transport setting {name} must be positive, got {getattr(self, name)}")
        if self.max_message_bytes <= 0 or self.chunk_bytes <= 0:
            raise ConfigError("transport settings max_message_bytes and chunk_bytes must be positive")
        if self.chunk_bytes > 64 * MiB:
            raise ConfigError("transport setting chunk_bytes must be at most 64 MiB")

    def retry_policy(self, deadline: float | None = None) -> RetryPolicy:
        """How a send retries: these back-off settings, until ``deadline`` (``connect_deadline``)."""
        return RetryPolicy(
            deadline=self.connect_deadline if deadline is None else deadline,
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
        )
