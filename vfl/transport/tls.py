"""Party identities: a private key and a self-signed certificate per party, pinned by fingerprint.

Every party owns one ECDSA P-256 key (accepted by gRPC's TLS stack for both the server and the
client side of mutual TLS) and a self-signed X.509 certificate whose subject CN is the party id.
The certificate is its own trust anchor: partners pin its SHA-256 fingerprint in the federation
file, and the Flight transport trusts exactly the pinned certificates. The same key also signs
every message envelope, which binds the party id a sender claims to the certificate pinned for it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vfl.errors import ConfigError, KeyFileError
from vfl.io import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_VALID_DAYS = 3650
KEY_FILE = "party.key"
CERT_FILE = "party.crt"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""}


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def party_dns_name(party_id: str) -> str:
    """The DNS name every party certificate carries for its id, checked by TLS regardless of address.

    Connecting with this name as the TLS host name keeps the handshake independent of how a peer
    is reached (IP, NAT, DNS alias); the trust decision is the pinned certificate, not the name.
    """
    label = re.sub(r"[^a-z0-9-]+", "-", party_id.lower()).strip("-")[:40] or "party"
    # The digest keeps ids that sanitize alike ("Bank_A", "bank-a") apart.
    digest = hashlib.sha256(party_id.encode()).hexdigest()[:12]
    return f"{label}-{digest}.vfl-party.invalid"


def fingerprint(cert: x509.Certificate) -> str:
    """``"sha256:<hex>"``: the SHA-256 of the certificate's DER encoding, as pinned in federation files."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def fingerprint_der(der: bytes) -> str:
    """Fingerprint of a DER-encoded certificate (as returned by a TLS handshake)."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(value: str) -> str:
    """Accept ``sha256:AB:CD...``, ``ab cd ...`` or bare hex; return the canonical ``sha256:<hex>``."""
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    text = text.replace(":", "").replace(" ", "")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ConfigError(
            f"'{value}' is not a SHA-256 certificate fingerprint (expected sha256: and 64 hex digits)"
        )
    return "sha256:" + text


def certificate_party_id(cert: x509.Certificate) -> str:
    """The party id in the certificate's subject common name."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise KeyFileError("the certificate has no subject common name, so it names no party")
    return str(attrs[0].value)


def load_certificate(source: str | os.PathLike[str] | bytes) -> x509.Certificate:
    """Load a PEM certificate from a path or PEM bytes; ``KeyFileError`` if missing or damaged."""
    if isinstance(source, bytes):
        data, where = source, "the certificate"
    else:
        path = Path(source)
        where = f"certificate file {path}"
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyFileError(f"{where} does not exist; create it with 'vfl init' or fix the path") from exc
        except OSError as exc:
            raise KeyFileError(f"{where} cannot be read: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KeyFileError(f"{where} is not a valid PEM certificate (damaged or wrong file)") from exc


def check_validity(cert: x509.Certificate, where: str = "the certificate") -> None:
    """``KeyFileError`` if the certificate is expired or not yet valid."""
    now = _utcnow()
    if cert.not_valid_after_utc < now:
        raise KeyFileError(
            f"{where} for '{certificate_party_id(cert)}' expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d}; create a new identity and share the new fingerprint"
        )
    if cert.not_valid_before_utc > now + _dt.timedelta(minutes=5):
        raise KeyFileError(
            f"{where} for '{certificate_party_id(cert)}' is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the system clock"
        )


@dataclass(frozen=True)
class PartyIdentity:
    """A party's own key and certificate, in memory (PEM bytes as gRPC wants them, plus parsed objects)."""

    party_id: str
    cert_pem: bytes
    key_pem: bytes
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 signature of ``data`` with the party's private key."""
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` over ``data`` was made with the key of ``cert``."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _san_entries(hosts: Iterable[str], party_id: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(party_dns_name(party_id))]
    wanted: list[str] = []
    for host in hosts:
        host = host.strip().strip("[]")
        if host in _LOCAL_HOSTS:
            wanted += ["127.0.0.1", "localhost", "::1"]
        elif host:
            wanted.append(host)
    seen: set[str] = set()
    for host in wanted:
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def create_identity(
    party_id: str,
    key_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str],
    hosts: Iterable[str] = ("127.0.0.1",),
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
    overwrite: bool = False,
) -> PartyIdentity:
    """Create a P-256 key (mode 0600) and a self-signed certificate (CN = ``party_id``) and write them.

    ``hosts`` are the names/addresses the party listens on; they go into the SubjectAltName (a local
    address adds 127.0.0.1, ::1 and localhost). Existing files are kept unless ``overwrite``: a
    party's fingerprint is pinned by its partners, so replacing it silently would lock them out.
    """
    if not party_id or not party_id.strip():
        raise ConfigError("a party id must not be empty")
    key_path, cert_path = Path(key_path), Path(cert_path)
    for path in (key_path, cert_path):
        if path.exists() and not overwrite:
            raise KeyFileError(
                f"{path} already exists; refusing to replace a pinned identity (remove it first to start over)"
            )
        if not path.parent.is_dir():
            raise KeyFileError(f"directory {path.parent} does not exist")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party_id)])
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts, party_id)), critical=False)
        # Self-signed and its own trust anchor: CA with no path below it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    atomic_write_bytes(key_path, key_pem, mode=0o600)
    atomic_write_bytes(cert_path, cert_pem, mode=0o644)
    log.info("created identity for '%s' (%s) in %s", party_id, fingerprint(cert), cert_path)
    return PartyIdentity(party_id, cert_pem, key_pem, cert, key)


def load_identity(
    key_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str],
    party_id: str | None = None,
) -> PartyIdentity:
    """Load and check a party's key and certificate.

    ``KeyFileError`` if a file is missing or damaged, the key is not the certificate's key, the
    certificate is expired, or (when ``party_id`` is given) the certificate names another party.
    A key file readable by others is accepted with a warning.
    """
    key_path, cert_path = Path(key_path), Path(cert_path)
    cert = load_certificate(cert_path)
    try:
        key_pem = key_path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"key file {key_path} does not exist; create it with 'vfl init' or fix the path"
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"key file {key_path} cannot be read: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"key file {key_path} is not a valid unencrypted PEM private key (damaged or wrong file)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(
            f"key file {key_path} is not an ECDSA P-256 key; create the identity with 'vfl init'"
        )
    if os.name == "posix" and key_path.stat().st_mode & 0o077:
        log.warning("key file %s is readable by other users; run 'chmod 600 %s'", key_path, key_path)
    own = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pinned = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if own != pinned:
        raise KeyFileError(
            f"key file {key_path} does not belong to certificate {cert_path}; they come from different identities"
        )
    check_validity(cert, f"certificate {cert_path}")
    cn = certificate_party_id(cert)
    if party_id is not None and cn != party_id:
        raise KeyFileError(f"certificate {cert_path} belongs to party '{cn}', not '{party_id}'")
    return PartyIdentity(cn, cert.public_bytes(serialization.Encoding.PEM), key_pem, cert, key)
