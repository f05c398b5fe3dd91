"""Key generation, fingerprints, key files and public-key wire forms."""

from __future__ import annotations

import json
import os
import stat

import gmpy2
import phe
import pytest

from vfl.crypto import PrivateKey, PublicKey, fingerprint_of, generate_keypair
from vfl.errors import CryptoError, IntegrityError, KeyFileError, VflError


def test_keypair_is_blum_and_phe_compatible(pk, sk):
    p, q = int(sk.p), int(sk.q)
    assert p % 4 == 3 and q % 4 == 3
    assert gmpy2.gcd(p - 1, q - 1) == 2
    assert p * q == int(pk.n) and pk.bits == 1024
    assert gmpy2.is_prime(p) and gmpy2.is_prime(q)
    assert isinstance(pk.phe, phe.PaillierPublicKey) and pk.phe.n == int(pk.n)
    assert isinstance(sk.phe, phe.PaillierPrivateKey)
    assert sk.phe.decrypt(pk.phe.encrypt(-12.5)) == -12.5


def test_unsupported_size_is_refused():
    with pytest.raises(CryptoError, match="unsupported key size 512"):
        generate_keypair(512)


def test_fingerprint_is_sha256_of_n(pk):
    import hashlib

    assert pk.fingerprint == hashlib.sha256(int(pk.n).to_bytes(pk.key_bytes, "big")).hexdigest()
    assert fingerprint_of(int(pk.n)) == pk.fingerprint
    assert len(pk.fingerprint) == 64


def test_private_key_file_round_trip(tmp_path, pk, sk):
    path = tmp_path / "arbiter.key"
    sk.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = PrivateKey.load(path, expected_fingerprint=pk.fingerprint)
    assert loaded.p == sk.p and loaded.q == sk.q and loaded.public_key.h_s == pk.h_s
    public = PublicKey.load(path)
    assert public.fingerprint == pk.fingerprint
    pub_path = tmp_path / "arbiter.pub"
    pk.save(pub_path)
    assert PublicKey.load(pub_path).n == pk.n
    with pytest.raises(KeyFileError, match="holds only a public key"):
        PrivateKey.load(pub_path)


def _damage(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_damaged_key_files_are_clear_errors(tmp_path, pk, sk, other_keypair):
    path = tmp_path / "k.json"
    with pytest.raises(KeyFileError, match="does not exist"):
        PrivateKey.load(path)
    sk.save(path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(KeyFileError, match="not valid JSON"):
        PrivateKey.load(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(KeyFileError, match="not a vfl Paillier key file"):
        PublicKey.load(path)
    sk.save(path)
    n_hex = json.loads(path.read_text())["n"]
    _damage(path, n=n_hex[:-1] + ("0" if n_hex[-1] != "0" else "1"))
    with pytest.raises(KeyFileError, match="stored fingerprint .* does not match its modulus"):
        PrivateKey.load(path)
    sk.save(path)
    _damage(path, p=format(int(sk.p) + 2, "x"))
    with pytest.raises(KeyFileError, match="primes do not multiply"):
        PrivateKey.load(path)
    sk.save(path)
    _damage(path, q="zz")
    with pytest.raises(KeyFileError, match="'q' is not hexadecimal"):
        PrivateKey.load(path)
    sk.save(path)
    _damage(path, h_s="1")
    with pytest.raises(KeyFileError, match="DJN base"):
        PrivateKey.load(path)
    sk.save(path)
    other = other_keypair[0].fingerprint
    with pytest.raises(KeyFileError, match=f"expected {other[:16]}"):
        PrivateKey.load(path, expected_fingerprint=other)


def test_public_key_bytes_and_arrow(pk, other_keypair):
    data = pk.to_bytes()
    assert PublicKey.from_bytes(data).fingerprint == pk.fingerprint
    assert PublicKey.from_bytes(data).h_s == pk.h_s
    with pytest.raises(IntegrityError, match="header"):
        PublicKey.from_bytes(b"junk" + data)
    with pytest.raises(IntegrityError, match="length"):
        PublicKey.from_bytes(data[:-1])
    with pytest.raises(IntegrityError, match="another key"):
        PublicKey.from_bytes(data, expected_fingerprint=other_keypair[0].fingerprint)
    table = pk.to_arrow()
    back = PublicKey.from_arrow(table, expected_fingerprint=pk.fingerprint)
    assert back.n == pk.n and back.h_s == pk.h_s
    forged = table.replace_schema_metadata(
        {**table.schema.metadata, b"vfl.paillier.key_fingerprint": other_keypair[0].fingerprint.encode()}
    )
    with pytest.raises(IntegrityError, match="altered"):
        PublicKey.from_arrow(forged)
    with pytest.raises(VflError, match="not a vfl Paillier public key"):
        PublicKey.from_arrow(table.replace_schema_metadata({}))
