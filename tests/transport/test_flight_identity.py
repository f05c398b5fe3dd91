"""Party identities: key and self-signed certificate creation, loading, fingerprints, and bad files."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from vfl.errors import ConfigError, KeyFileError
from vfl.transport.tls import (
    certificate_party_id,
    create_identity,
    fingerprint,
    load_certificate,
    load_identity,
    normalize_fingerprint,
    party_dns_name,
    verify_signature,
)


def test_create_and_load_roundtrip(tmp_path):
    ident = create_identity("bank", tmp_path / "k.pem", tmp_path / "c.pem", hosts=["127.0.0.1"])
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert ident.fingerprint.startswith("sha256:") and len(ident.fingerprint) == 7 + 64
    loaded = load_identity(tmp_path / "k.pem", tmp_path / "c.pem", party_id="bank")
    assert loaded.party_id == "bank"
    assert loaded.fingerprint == ident.fingerprint
    cert = loaded.certificate
    assert certificate_party_id(cert) == "bank"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName)[0] == party_dns_name("bank")
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)][:1] == ["127.0.0.1"]
    sig = loaded.sign(b"hello")
    assert verify_signature(cert, sig, b"hello")
    assert not verify_signature(cert, sig, b"hellO")


def test_remote_host_goes_into_san(tmp_path):
    ident = create_identity("h", tmp_path / "k", tmp_path / "c", hosts=["10.0.0.5", "vfl.bank.example"])
    san = ident.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "vfl.bank.example" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


def test_party_dns_names_differ_for_ids_that_sanitize_alike():
    assert party_dns_name("Bank_A") != party_dns_name("bank-a")
    assert party_dns_name("bank-a").endswith(".vfl-party.invalid")


def test_fingerprint_normalization(tmp_path):
    ident = create_identity("g", tmp_path / "k", tmp_path / "c")
    hexpart = ident.fingerprint.split(":", 1)[1]
    colon = ":".join(hexpart[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_fingerprint(colon) == ident.fingerprint
    assert normalize_fingerprint(hexpart) == ident.fingerprint
    with pytest.raises(ConfigError, match="not a SHA-256"):
        normalize_fingerprint("sha256:1234")


def test_refuses_to_overwrite_an_identity(tmp_path):
    create_identity("g", tmp_path / "k", tmp_path / "c")
    with pytest.raises(KeyFileError, match="already exists"):
        create_identity("g", tmp_path / "k", tmp_path / "c")
    create_identity("g", tmp_path / "k", tmp_path / "c", overwrite=True)


def test_missing_files(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_identity(tmp_path / "nokey", tmp_path / "nocert")
    create_identity("g", tmp_path / "k", tmp_path / "c")
    with pytest.raises(KeyFileError, match=r"key file .*nokey does not exist"):
        load_identity(tmp_path / "nokey", tmp_path / "c")


def test_damaged_files(tmp_path):
    create_identity("g", tmp_path / "k", tmp_path / "c")
    (tmp_path / "bad").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    with pytest.raises(KeyFileError, match="not a valid PEM certificate"):
        load_certificate(tmp_path / "bad")
    with pytest.raises(KeyFileError, match="not a valid unencrypted PEM private key"):
        load_identity(tmp_path / "bad", tmp_path / "c")


def test_key_of_another_identity(tmp_path):
    create_identity("g", tmp_path / "k1", tmp_path / "c1")
    create_identity("g", tmp_path / "k2", tmp_path / "c2")
    with pytest.raises(KeyFileError, match="does not belong to certificate"):
        load_identity(tmp_path / "k2", tmp_path / "c1")


def test_certificate_of_another_party(tmp_path):
    create_identity("guest", tmp_path / "k", tmp_path / "c")
    with pytest.raises(KeyFileError, match="belongs to party 'guest', not 'host'"):
        load_identity(tmp_path / "k", tmp_path / "c", party_id="host")


def test_expired_certificate(tmp_path):
    ident = create_identity("g", tmp_path / "k", tmp_path / "c")
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "g")])
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ident.private_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=35))
        .sign(ident.private_key, hashes.SHA256())
    )
    (tmp_path / "c").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KeyFileError, match="expired on"):
        load_identity(tmp_path / "k", tmp_path / "c")
    assert fingerprint(old) != ident.fingerprint
