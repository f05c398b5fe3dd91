"""Signed message envelopes and the chunked wire format of a Flight message (DESIGN.md §10).

Every message carries, in its ``FlightDescriptor`` command, a signed envelope: job id, sender,
receiver, tag, a nonce, the payload size and its SHA-256. The receiver checks, with ``check_envelope``,
the signature against the pinned certificate of the *claimed* sender and that the message is meant for
it, and with ``read_payload`` that the bytes it received are exactly the bytes that were signed.

The payload (an Arrow IPC stream, see ``channel.py``) travels as a sequence of record batches of
one binary column (``CHUNK_SCHEMA``), each at most ``chunk_bytes`` long, so a large vector streams
instead of going as one gRPC message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa
from cryptography import x509

from vfl.errors import IntegrityError
from vfl.transport.tls import PartyIdentity, party_dns_name, verify_signature

MiB = 1 << 20
ENVELOPE_VERSION = 1
SIGNING_CONTEXT = b"vfl-envelope-v1\n"
CHUNK_SCHEMA = pa.schema([pa.field("chunk", pa.binary(), nullable=False)])


def size_text(n: int) -> str:
    """``n`` bytes for a person: ``"2.3 MiB"`` or ``"512 bytes"``."""
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


@dataclass(frozen=True)
class Envelope:
    """What a sender signs for one message: the context it belongs to and a digest of its bytes."""

    job_id: str
    sender: str
    receiver: str
    tag: str
    size: int
    sha256: str
    nonce: str
    sent_at: float
    version: int = ENVELOPE_VERSION

    def canonical(self) -> bytes:
        """The exact bytes that are signed (sorted-key compact JSON)."""
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":")).encode()


def seal(identity: PartyIdentity, job_id: str, receiver: str, tag: str, payload: bytes) -> bytes:
    """A signed envelope for ``payload``, encoded as a Flight descriptor command."""
    env = Envelope(
        job_id=job_id,
        sender=identity.party_id,
        receiver=receiver,
        tag=tag,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        nonce=secrets.token_hex(16),
        sent_at=time.time(),
    )
    body = env.canonical()
    sig = identity.sign(SIGNING_CONTEXT + body)
    return json.dumps({"envelope": body.decode(), "signature": base64.b64encode(sig).decode()}).encode()


def unseal(command: bytes) -> tuple[Envelope, bytes, bytes]:
    """Parse a descriptor command into ``(envelope, signed_bytes, signature)``; ``IntegrityError`` if malformed."""
    try:
        outer = json.loads(command)
        body = outer["envelope"].encode()
        signature = base64.b64decode(outer["signature"], validate=True)
        fields = json.loads(body)
        env = Envelope(**fields)
        if env.version != ENVELOPE_VERSION:
            raise ValueError(f"envelope version {env.version}")
        if not all(
            isinstance(getattr(env, k), str) for k in ("job_id", "sender", "receiver", "tag", "sha256")
        ):
            raise ValueError("field types")
        if not isinstance(env.size, int) or env.size < 0:
            raise ValueError("size")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"the message carries no valid signed vfl envelope ({exc})") from exc
    return env, SIGNING_CONTEXT + body, signature


def chunk_batches(payload: bytes, chunk_bytes: int) -> Iterator[pa.RecordBatch]:
    """Zero-copy slices of ``payload`` as one-row record batches of ``CHUNK_SCHEMA``."""
    buf = pa.py_buffer(payload)
    for start in range(0, max(len(payload), 1), chunk_bytes):
        piece = buf.slice(start, min(chunk_bytes, len(payload) - start))
        offsets = pa.array([0, piece.size], pa.int32()).buffers()[1]
        column = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, piece])
        yield pa.RecordBatch.from_arrays([column], schema=CHUNK_SCHEMA)


def read_payload(env: Envelope, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> bytes:
    """Join the received chunks, checking them against the signed size and SHA-256 as they come.

    ``batches`` are the record batches of a Flight ``do_put`` (``chunk.data`` of its reader); an
    ``IntegrityError`` says whether the message was in another format, truncated, extended or altered.
    """
    if schema != CHUNK_SCHEMA:
        raise IntegrityError(f"message '{env.tag}' from '{env.sender}' is not in the vfl chunk format")
    pieces: list[pa.Buffer] = []
    digest = hashlib.sha256()
    total = 0
    for batch in batches:
        column = batch.column(0)
        for i in range(len(column)):
            piece = column[i].as_buffer()
            total += piece.size
            if total > env.size:
                raise IntegrityError(
                    f"message '{env.tag}' from '{env.sender}' is longer than its signed size {env.size}; it was altered"
                )
            digest.update(piece)
            pieces.append(piece)
    if total != env.size:
        raise IntegrityError(
            f"message '{env.tag}' from '{env.sender}' has {total} of its {env.size} signed bytes; it was truncated"
        )
    if digest.hexdigest() != env.sha256:
        raise IntegrityError(
            f"message '{env.tag}' from '{env.sender}' does not match its signed SHA-256; it was altered in transit"
        )
    return b"".join(pieces)


def check_envelope(
    env: Envelope,
    signed: bytes,
    signature: bytes,
    tls_identity: bytes,
    *,
    me: str,
    job_id: str,
    certificates: Mapping[str, x509.Certificate],
    max_bytes: int,
) -> None:
    """``IntegrityError`` unless party ``me`` of job ``job_id`` may accept this envelope.

    The claimed sender must be pinned (``certificates``), be the party the TLS connection
    authenticated (``tls_identity``), and have signed it; it must be meant for ``me`` and this job,
    and announce at most ``max_bytes``.
    """
    cert = certificates.get(env.sender)
    if cert is None:
        raise IntegrityError(f"sender '{env.sender}' is not a peer of '{me}' in this federation")
    presented = tls_identity.decode(errors="replace")
    if presented != party_dns_name(env.sender):
        raise IntegrityError(
            f"the connection's certificate ({presented}) is not the one pinned for '{env.sender}', "
            "the party the message claims to come from"
        )
    if not verify_signature(cert, signature, signed):
        raise IntegrityError(
            f"message '{env.tag}' is not signed by the key pinned for '{env.sender}'; "
            "it was forged or the sender uses another identity"
        )
    if env.receiver != me:
        raise IntegrityError(
            f"message '{env.tag}' from '{env.sender}' is addressed to '{env.receiver}', not '{me}'"
        )
    if env.job_id != job_id:
        raise IntegrityError(
            f"message '{env.tag}' from '{env.sender}' belongs to job '{env.job_id}', but '{me}' runs "
            f"job '{job_id}'; check that every party runs the same job"
        )
    if env.size > max_bytes:
        raise IntegrityError(
            f"message '{env.tag}' from '{env.sender}' is {size_text(env.size)}, over the "
            f"{size_text(max_bytes)} limit of '{me}'"
        )
