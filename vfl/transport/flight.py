"""Arrow Flight transport with mutual TLS and signed message envelopes (DESIGN.md §10).

Each party runs a Flight server as its inbox; a peer delivers a message with one ``do_put``.

Who may talk to whom is decided twice:

* **TLS.** The server trusts exactly the pinned peer certificates (each self-signed, so each is its
  own root) and requires a client certificate; the client trusts only the pinned certificate of
  the peer it calls. An unpinned client or a server with another certificate fails the handshake.
  The TLS peer identity gRPC reports (the certificate's first SubjectAltName, which encodes the
  party id) must also match the party the message claims to come from.
* **Envelope.** Every message carries, in its ``FlightDescriptor`` command, a signed envelope: job
  id, sender, receiver, tag, a nonce, the payload size and its SHA-256. The receiver checks the
  signature against the pinned certificate of the *claimed* sender and refuses anything unsigned,
  signed with another key, meant for another job or receiver, over the size limit, or whose bytes
  do not hash to what was signed (truncated or altered).

The payload (an Arrow IPC stream, see ``channel.py``) travels as a sequence of record batches of
one binary column, each at most ``chunk_bytes`` long, so a large vector streams instead of going
as one gRPC message, and the receiver can hash exactly the bytes that were signed.

Delivery is idempotent: the first authentic copy of ``(sender, tag)`` wins; later copies, even
after the message was consumed by ``recv``, are acknowledged and dropped. That is what makes
retrying a ``do_put`` whose acknowledgement was lost safe.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from vfl.errors import (
    ConfigError,
    IntegrityError,
    KeyFileError,
    PeerTimeoutError,
    ProtocolError,
    TransportError,
)
from vfl.transport.channel import (
    ABORT_TAG,
    NOTICE_PREFIX,
    Channel,
    Interrupted,
    Notice,
    abort_reason,
    parse_notice,
)
from vfl.transport.tls import (
    PartyIdentity,
    certificate_party_id,
    check_validity,
    fingerprint,
    load_certificate,
    normalize_fingerprint,
    party_dns_name,
    verify_signature,
)

log = logging.getLogger(__name__)

MiB = 1 << 20
ENVELOPE_VERSION = 1
_SIGNING_CONTEXT = b"vfl-envelope-v1\n"
_CHUNK_SCHEMA = pa.schema([pa.field("chunk", pa.binary(), nullable=False)])
_REFUSED = "vfl refused the message: "


# --------------------------------------------------------------------------- configuration


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``; ``ConfigError`` if malformed."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"'{address}' is not an address of the form host:port (e.g. 127.0.0.1:7470)")
    return host.strip("[]"), int(port_text)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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

    ``connect_deadline`` bounds how long ``send`` keeps retrying a peer that is unreachable
    (back-off from ``initial_backoff`` doubling up to ``max_backoff``); ``call_timeout`` bounds one
    transfer attempt. ``max_message_bytes`` applies to sending and receiving and should be the same
    at every party.
    """

    connect_deadline: float = 30.0
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    call_timeout: float = 300.0
    max_message_bytes: int = 512 * MiB
    chunk_bytes: int = 4 * MiB
    probe_timeout: float = 3.0
    linger_on_error: float = 2.0

    def __post_init__(self) -> None:
        for name in ("connect_deadline", "initial_backoff", "max_backoff", "call_timeout", "probe_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"transport setting {name} must be positive, got {getattr(self, name)}")
        if self.max_message_bytes <= 0 or self.chunk_bytes <= 0:
            raise ConfigError("transport settings max_message_bytes and chunk_bytes must be positive")
        if self.chunk_bytes > 64 * MiB:
            raise ConfigError("transport setting chunk_bytes must be at most 64 MiB")


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


# --------------------------------------------------------------------------- envelopes


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
    sig = identity.sign(_SIGNING_CONTEXT + body)
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
    return env, _SIGNING_CONTEXT + body, signature


def _chunk_batches(payload: bytes, chunk_bytes: int) -> Iterator[pa.RecordBatch]:
    """Zero-copy slices of ``payload`` as one-row record batches of the chunk schema."""
    buf = pa.py_buffer(payload)
    for start in range(0, max(len(payload), 1), chunk_bytes):
        piece = buf.slice(start, min(chunk_bytes, len(payload) - start))
        offsets = pa.array([0, piece.size], pa.int32()).buffers()[1]
        column = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, piece])
        yield pa.RecordBatch.from_arrays([column], schema=_CHUNK_SCHEMA)


# --------------------------------------------------------------------------- inbox


@dataclass(frozen=True)
class Rejection:
    """A message this party's inbox refused, kept for diagnostics and time-out messages."""

    claimed_sender: str
    tag: str
    reason: str
    at: float


class _Mailbox:
    """Thread-safe store of received payloads keyed by (sender, tag); the first authentic copy wins."""

    def __init__(self) -> None:
        self._boxes: dict[tuple[str, str], bytes] = {}
        self._delivered: set[tuple[str, str]] = set()
        self._rejections: list[Rejection] = []
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._notices: list[Notice] = []

    def put(self, sender: str, tag: str, payload: bytes) -> bool:
        """Store a message; False if a copy was already stored or delivered (the resend is dropped)."""
        key = (sender, tag)
        if tag == ABORT_TAG:
            self.abort(abort_reason(sender, payload))
            return True
        if tag.startswith(NOTICE_PREFIX):
            with self._cond:
                if key in self._delivered:
                    return False  # a replayed notice interrupts nobody twice
                self._delivered.add(key)
                self._notices.append(parse_notice(sender, tag, payload))
                self._cond.notify_all()
            return True
        with self._cond:
            if key in self._boxes or key in self._delivered:
                return False
            self._boxes[key] = payload
            self._cond.notify_all()
            return True

    def reject(self, rejection: Rejection) -> None:
        with self._cond:
            self._rejections.append(rejection)
            del self._rejections[:-100]

    def rejections(self) -> list[Rejection]:
        with self._cond:
            return list(self._rejections)

    def abort(self, reason: str) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = reason
            self._cond.notify_all()

    def take(self, sender: str, tag: str, timeout: float) -> bytes | None:
        """The payload, or None after ``timeout`` s; ``ProtocolError`` if the channel was aborted."""
        key = (sender, tag)
        with self._cond:
            self._cond.wait_for(
                lambda: key in self._boxes or self._failure is not None or bool(self._notices),
                timeout=timeout,
            )
            if self._notices:
                raise Interrupted(self._notices.pop(0))
            if key in self._boxes:
                self._delivered.add(key)
                return self._boxes.pop(key)
            if self._failure is not None:
                raise ProtocolError(f"the job was aborted: {self._failure}")
            return None


class _InboxServer(flight.FlightServerBase):
    """The Flight server of one party: verifies each ``do_put`` and files it in the mailbox."""

    def __init__(self, channel: FlightChannel, location: str, **kwargs: object) -> None:
        self._channel = channel
        super().__init__(location, **kwargs)

    def do_put(self, context, descriptor, reader, writer):  # noqa: ANN001, ANN201 (Flight callback)
        try:
            status = self._channel._accept(context.peer_identity(), descriptor.command, reader)
        except IntegrityError as exc:
            raise flight.FlightUnauthorizedError(_REFUSED + str(exc)) from None
        writer.write(pa.py_buffer(status.encode()))

    def list_actions(self, context):  # noqa: ANN001, ANN201
        return []


# --------------------------------------------------------------------------- channel


class FlightChannel(Channel):
    """A party's networked channel: a Flight inbox server plus mTLS clients to its pinned peers.

    ``listen`` is ``host:port`` (port 0 picks a free one; see ``address`` for what was bound).
    ``job_id`` is signed into every message and checked on every message received, so messages of
    another job are refused. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        identity: PartyIdentity,
        peers: Iterable[Peer],
        *,
        job_id: str,
        listen: str = "127.0.0.1:0",
        settings: FlightSettings | None = None,
    ) -> None:
        super().__init__(identity.party_id)
        self.identity = identity
        self.job_id = job_id
        self.settings = settings or FlightSettings()
        self._peers: dict[str, Peer] = {}
        self._certs: dict[str, x509.Certificate] = {}
        self._pems: dict[str, bytes] = {}
        for peer in peers:
            if peer.party_id == identity.party_id:
                continue  # a federation file lists every party, this one included
            if peer.party_id in self._peers:
                raise ConfigError(f"peer '{peer.party_id}' is listed twice")
            parse_address(peer.address)
            cert = peer.load_certificate()
            self._peers[peer.party_id] = peer
            self._certs[peer.party_id] = cert
            self._pems[peer.party_id] = cert.public_bytes(Encoding.PEM)
        if not self._peers:
            raise ConfigError(f"party '{identity.party_id}' has no peers to talk to")
        self._mailbox = _Mailbox()
        self._clients: dict[str, flight.FlightClient] = {}
        self._clients_lock = threading.Lock()
        self._closed = False
        self._probe_files: tempfile.TemporaryDirectory[str] | None = None

        host, port = parse_address(listen)
        self._listen_host = host
        _check_port_free(self.party, host, port)
        root = b"".join(self._pems.values())
        try:
            self._server = _InboxServer(
                self,
                f"grpc+tls://{_format_address(host, port)}",
                tls_certificates=[(identity.cert_pem, identity.key_pem)],
                verify_client=True,
                root_certificates=root,
            )
        except (pa.ArrowException, OSError) as exc:
            raise TransportError(
                f"party '{self.party}' cannot listen on {_format_address(host, port)} ({_first_line(exc)}); "
                "the port is in use or the address is not on this machine — choose another listen address"
            ) from exc
        self.port = self._server.port
        self.address = _format_address(host, self.port)
        log.info("party '%s' inbox listening on %s (job %s)", self.party, self.address, job_id)

    # ---- public helpers

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    @property
    def rejections(self) -> list[Rejection]:
        """Messages this inbox refused (most recent 100)."""
        return self._mailbox.rejections()

    def abort(self, reason: str) -> None:
        """Wake every ``recv`` waiting on this channel with a ``ProtocolError`` (this party gave up)."""
        self._mailbox.abort(reason)

    def close(self) -> None:
        """Stop the inbox server and drop client connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._mailbox.abort(f"party '{self.party}' closed its channel")
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        with contextlib.suppress(Exception):
            self._server.shutdown()
        if self._probe_files is not None:
            self._probe_files.cleanup()
        log.info("party '%s' inbox on %s closed", self.party, self.address)

    def __enter__(self) -> FlightChannel:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None and self.settings.linger_on_error > 0:
            # Peers may still be sending us what they sent before they learned we stopped; keep the
            # inbox open a moment so they get our abort notice or see the real error, not a dead port.
            time.sleep(self.settings.linger_on_error)
        self.close()

    # ---- receiving

    def _accept(self, tls_identity: bytes, command: bytes, reader: flight.MetadataRecordBatchReader) -> str:
        """Verify and store one incoming message; ``IntegrityError`` (refusal) on any problem."""
        try:
            env, signed, signature = unseal(command)
        except IntegrityError as exc:
            log.warning("party '%s' refused a message without a valid envelope: %s", self.party, exc)
            self._mailbox.reject(Rejection("?", "?", str(exc), time.time()))
            raise
        try:
            self._verify(env, signed, signature, tls_identity)
            payload = self._read_payload(env, reader)
        except IntegrityError as exc:
            log.warning(
                "party '%s' refused message '%s' claimed from '%s': %s", self.party, env.tag, env.sender, exc
            )
            self._mailbox.reject(Rejection(env.sender, env.tag, str(exc), time.time()))
            raise
        if self._mailbox.put(env.sender, env.tag, payload):
            log.debug("received '%s' from '%s' (%d bytes)", env.tag, env.sender, len(payload))
            return "stored"
        log.info("dropped a resent copy of '%s' from '%s' (first copy wins)", env.tag, env.sender)
        return "duplicate"

    def _verify(self, env: Envelope, signed: bytes, signature: bytes, tls_identity: bytes) -> None:
        cert = self._certs.get(env.sender)
        if cert is None:
            raise IntegrityError(f"sender '{env.sender}' is not a peer of '{self.party}' in this federation")
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
        if env.receiver != self.party:
            raise IntegrityError(
                f"message '{env.tag}' from '{env.sender}' is addressed to '{env.receiver}', not '{self.party}'"
            )
        if env.job_id != self.job_id:
            raise IntegrityError(
                f"message '{env.tag}' from '{env.sender}' belongs to job '{env.job_id}', but '{self.party}' runs "
                f"job '{self.job_id}'; check that every party runs the same job"
            )
        if env.size > self.settings.max_message_bytes:
            raise IntegrityError(
                f"message '{env.tag}' from '{env.sender}' is {_size(env.size)}, over the "
                f"{_size(self.settings.max_message_bytes)} limit of '{self.party}'"
            )

    def _read_payload(self, env: Envelope, reader: flight.MetadataRecordBatchReader) -> bytes:
        if reader.schema != _CHUNK_SCHEMA:
            raise IntegrityError(f"message '{env.tag}' from '{env.sender}' is not in the vfl chunk format")
        pieces: list[pa.Buffer] = []
        digest = hashlib.sha256()
        total = 0
        for chunk in reader:
            column = chunk.data.column(0)
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

    def _recv_bytes(self, frm: str, tag: str, timeout: float) -> bytes:
        peer = self._peer(frm)
        payload = self._mailbox.take(frm, tag, timeout)
        if payload is not None:
            return payload
        note = ""
        refused = [r for r in self._mailbox.rejections() if r.claimed_sender == frm]
        if refused:
            note = f" ({len(refused)} message(s) claiming to come from it were refused, the last: {refused[-1].reason})"
        raise PeerTimeoutError(
            f"party '{frm}' at {peer.address} did not send '{tag}' to '{self.party}' within {timeout:g} s{note}; "
            "check that it is running and that every party runs the same job"
        )

    # ---- sending

    def _peer(self, party_id: str) -> Peer:
        peer = self._peers.get(party_id)
        if peer is None:
            raise ConfigError(f"unknown peer '{party_id}'; the federation of '{self.party}' has {self.peers}")
        return peer

    def _client(self, to: str) -> flight.FlightClient:
        with self._clients_lock:
            if self._closed:
                raise TransportError(f"the channel of '{self.party}' is closed")
            client = self._clients.get(to)
            if client is None:
                host, port = parse_address(self._peers[to].address)
                client = flight.FlightClient(
                    f"grpc+tls://{_format_address(host, port)}",
                    tls_root_certs=self._pems[to],
                    cert_chain=self.identity.cert_pem,
                    private_key=self.identity.key_pem,
                    override_hostname=party_dns_name(to),
                    # A fresh channel after a failure must not inherit gRPC's shared reconnect back-off.
                    generic_options=[("grpc.use_local_subchannel_pool", 1)],
                )
                self._clients[to] = client
            return client

    def _drop_client(self, to: str) -> None:
        with self._clients_lock:
            client = self._clients.pop(to, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _put_raw(self, to: str, command: bytes, payload: bytes) -> str:
        """One ``do_put`` attempt of an already sealed message; returns the inbox's answer."""
        client = self._client(to)
        options = flight.FlightCallOptions(timeout=self.settings.call_timeout)
        writer, reader = client.do_put(
            flight.FlightDescriptor.for_command(command), _CHUNK_SCHEMA, options=options
        )
        try:
            for batch in _chunk_batches(payload, self.settings.chunk_bytes):
                writer.write_batch(batch)
            writer.done_writing()
            answer = reader.read()
        finally:
            writer.close()
        return answer.to_pybytes().decode() if answer is not None else ""

    def _send_bytes(self, to: str, tag: str, payload: bytes) -> None:
        self._peer(to)  # an unknown peer is a ConfigError before anything else
        limit = self.settings.max_message_bytes
        if len(payload) > limit:
            raise TransportError(
                f"message '{tag}' to '{to}' is {_size(len(payload))}, over the {_size(limit)} message size limit; "
                "send it in smaller parts or raise max_message_bytes at every party"
            )
        command = seal(self.identity, self.job_id, to, tag, payload)
        self._deliver(to, tag, command, payload)

    def _send_best_effort(self, to: str, tag: str, payload: bytes) -> None:
        """An abort notice: a peer that is already gone must not hold us for the whole connect deadline."""
        command = seal(self.identity, self.job_id, to, tag, payload)
        self._deliver(to, tag, command, payload, deadline=min(2.0, self.settings.connect_deadline))

    def _deliver(
        self, to: str, tag: str, command: bytes, payload: bytes, deadline: float | None = None
    ) -> None:
        """Send a sealed message, retrying transient failures with back-off until ``connect_deadline``.

        Separate from ``_send_bytes`` so fault tests can deliver forged or altered messages.
        """
        peer = self._peer(to)
        s = self.settings
        limit = s.connect_deadline if deadline is None else deadline
        start = time.monotonic()
        delay = s.initial_backoff
        attempts = 0
        while True:
            attempts += 1
            try:
                answer = self._put_raw(peer.party_id, command, payload)
                log.debug("sent '%s' to '%s' (%d bytes, %s)", tag, peer.party_id, len(payload), answer)
                return
            except flight.FlightUnauthorizedError as exc:
                raise TransportError(
                    f"peer '{peer.party_id}' at {peer.address} refused message '{tag}': {_server_reason(exc)}"
                ) from exc
            except (flight.FlightUnauthenticatedError, flight.FlightCancelledError) as exc:
                raise TransportError(
                    f"peer '{peer.party_id}' at {peer.address} refused message '{tag}': {_first_line(exc)}"
                ) from exc
            except (
                flight.FlightUnavailableError,
                flight.FlightTimedOutError,
                flight.FlightInternalError,
                OSError,  # pyarrow's ArrowIOError: the stream broke (server went away mid-transfer)
            ) as exc:
                self._drop_client(peer.party_id)
                self._raise_if_misconfigured(peer, exc)
                last = _first_line(exc)
                log.info("attempt %d to send '%s' to '%s' failed: %s", attempts, tag, peer.party_id, last)
            except (flight.FlightError, pa.ArrowException) as exc:
                self._drop_client(peer.party_id)
                raise TransportError(
                    f"sending '{tag}' to peer '{peer.party_id}' at {peer.address} failed: {_first_line(exc)}"
                ) from exc
            elapsed = time.monotonic() - start
            if elapsed >= limit:
                raise TransportError(
                    f"peer '{peer.party_id}' at {peer.address} did not answer within {limit:g} s "
                    f"(tried {attempts} times): check that it is running and listening on that address"
                )
            time.sleep(min(delay, limit - elapsed))
            delay = min(delay * 2, s.max_backoff)

    # ---- diagnosing TLS failures

    def _raise_if_misconfigured(self, peer: Peer, exc: Exception) -> None:
        """Turn a handshake failure that retrying cannot fix into a clear ``TransportError``."""
        text = str(exc)
        if "Connection refused" in text or "Deadline" in text:
            return  # down or slow: transient
        status = self.probe(peer.party_id)
        if status.problem and status.permanent:
            raise TransportError(status.problem) from exc

    def probe(self, party_id: str) -> PeerStatus:
        """Open a TLS connection to a peer's inbox and report whether each side accepts the other.

        Used to explain a failed connection (and by ``vfl federation check``): it tells a peer that
        is down from a peer presenting another certificate from a peer that does not pin ours.
        """
        peer = self._peer(party_id)
        host, port = parse_address(peer.address)
        pinned = fingerprint(self._certs[party_id])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # we compare the fingerprint ourselves, to report it
        ctx.set_alpn_protocols(["h2"])
        cert_file, key_file = self._own_identity_files()
        ctx.load_cert_chain(cert_file, key_file)
        where = f"peer '{party_id}' at {peer.address}"
        try:
            seen, accepted = _tls_probe(ctx, host, port, self.settings.probe_timeout)
        except ssl.SSLEOFError as exc:
            # Closed without a TLS alert: something in front of the peer (a proxy, a restarting
            # server) accepted and hung up. Nothing to fix in the certificates; worth retrying.
            return PeerStatus(
                party_id,
                peer.address,
                reachable=False,
                problem=f"{where} closed the connection during the TLS handshake ({exc.reason or exc}); "
                "check that it is running and listening on that address",
            )
        except ssl.SSLError as exc:
            return PeerStatus(
                party_id,
                peer.address,
                reachable=True,
                problem=f"{where} failed the TLS handshake ({exc.reason or exc}); check its certificate and ours",
                permanent=True,
            )
        except OSError as exc:  # refused, unreachable, unknown host, time-out
            return PeerStatus(
                party_id,
                peer.address,
                reachable=False,
                problem=f"{where} is not reachable ({exc.__class__.__name__}: {exc}); "
                "check that it is running and listening on that address",
            )
        if seen != pinned:
            return PeerStatus(
                party_id,
                peer.address,
                reachable=True,
                presented=seen,
                problem=f"{where} presented certificate {seen}, but the federation pins {pinned} for it; "
                "refusing to talk to it (ask the peer for its current card)",
                permanent=True,
            )
        if not accepted:
            return PeerStatus(
                party_id,
                peer.address,
                reachable=True,
                presented=seen,
                problem=f"{where} refused our certificate ({self.identity.fingerprint}); check that its "
                f"federation file pins that fingerprint for '{self.party}'",
                permanent=True,
            )
        return PeerStatus(party_id, peer.address, reachable=True, presented=seen)

    def _own_identity_files(self) -> tuple[str, str]:
        """The ``ssl`` module reads keys from files: a private 0600 copy, removed on ``close``."""
        if self._probe_files is None:
            self._probe_files = tempfile.TemporaryDirectory(prefix="vfl-probe-")
            base = Path(self._probe_files.name)
            for name, data in (("cert.pem", self.identity.cert_pem), ("key.pem", self.identity.key_pem)):
                fd = os.open(base / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
        base = Path(self._probe_files.name)
        return str(base / "cert.pem"), str(base / "key.pem")


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


def _tls_probe(ctx: ssl.SSLContext, host: str, port: int, timeout: float) -> tuple[str, bool]:
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


def _check_port_free(party: str, host: str, port: int) -> None:
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
        raise TransportError(
            f"party '{party}' cannot listen on {_format_address(host, port)} ({reason}); "
            "the port is in use or the address is not on this machine — choose another listen address"
        ) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__


def _server_reason(exc: BaseException) -> str:
    """The refusal reason a vfl inbox put in its error, without gRPC's debug context."""
    text = str(exc)
    if _REFUSED in text:
        text = text.split(_REFUSED, 1)[1]
    return text.split(". Detail:", 1)[0].strip()
