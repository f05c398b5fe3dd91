"""Arrow Flight transport with mutual TLS and signed message envelopes (DESIGN.md §10).

Each party runs a Flight server as its inbox; a peer delivers a message with one ``do_put``.

Who may talk to whom is decided twice:

* **TLS.** The server trusts exactly the pinned peer certificates (each self-signed, so each is its
  own root) and requires a client certificate; the client trusts only the pinned certificate of
  the peer it calls. An unpinned client or a server with another certificate fails the handshake,
  and ``probe.py`` explains which of the two it was.
* **Envelope** (``envelope.py``). Every message carries a signed envelope; the receiver checks it
  against the pinned certificate of the *claimed* sender, and that the TLS peer identity gRPC reports
  (the certificate's first SubjectAltName, which encodes the party id) is that sender.

Accepted messages go to a ``Mailbox`` (``mailbox.py``): the first authentic copy of ``(sender, tag)``
wins, so retrying a ``do_put`` whose acknowledgement was lost is safe. A send retries transient
failures under a ``RetryPolicy`` (``retry.py``): for up to ``first_contact`` seconds while the peer
has never answered (it may not have started yet), then for ``connect_deadline`` seconds.

This module keeps its historical public names: ``parse_address``, ``Envelope``, ``seal``, ``unseal``,
``PeerStatus`` and ``Rejection`` are importable from here as well as from their own modules.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.flight as flight
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vfl.errors import ConfigError, IntegrityError, PeerTimeoutError, TransportError
from vfl.transport.address import format_address, parse_address
from vfl.transport.channel import Channel
from vfl.transport.clients import PeerClients
from vfl.transport.envelope import (
    ENVELOPE_VERSION,
    Envelope,
    MiB,
    check_envelope,
    read_payload,
    seal,
    size_text,
    unseal,
)
from vfl.transport.mailbox import Mailbox, Rejection
from vfl.transport.peers import FlightSettings, Peer
from vfl.transport.probe import (
    REFUSED,
    IdentityFiles,
    PeerStatus,
    cannot_listen,
    check_port_free,
    first_line,
    probe_peer,
    server_reason,
)
from vfl.transport.retry import Failure, RetriesExhausted, RetryPolicy
from vfl.transport.tls import PartyIdentity, fingerprint

__all__ = [
    "ENVELOPE_VERSION",
    "Envelope",
    "FlightChannel",
    "FlightSettings",
    "MiB",
    "Peer",
    "PeerStatus",
    "Rejection",
    "RetryPolicy",
    "format_address",
    "parse_address",
    "seal",
    "unseal",
]

log = logging.getLogger(__name__)

# While a peer has never answered, log how long we have been waiting for it every this many seconds.
PROGRESS_EVERY = 30.0


# --------------------------------------------------------------------------- inbox


class _InboxServer(flight.FlightServerBase):
    """The Flight server of one party: verifies each ``do_put`` and files it in the mailbox."""

    def __init__(self, channel: FlightChannel, location: str, **kwargs: object) -> None:
        self._channel = channel
        super().__init__(location, **kwargs)

    def do_put(self, context, descriptor, reader, writer):  # noqa: ANN001, ANN201 (Flight callback)
        try:
            status = self._channel._accept(context.peer_identity(), descriptor.command, reader)
        except IntegrityError as exc:
            raise flight.FlightUnauthorizedError(REFUSED + str(exc)) from None
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
            parse_address(peer.address, f"the address of peer '{peer.party_id}'")
            cert = peer.load_certificate()
            self._peers[peer.party_id] = peer
            self._certs[peer.party_id] = cert
            self._pems[peer.party_id] = cert.public_bytes(Encoding.PEM)
        if not self._peers:
            raise ConfigError(f"party '{identity.party_id}' has no peers to talk to")
        self._mailbox = Mailbox()
        addresses = {p: peer.address for p, peer in self._peers.items()}
        self._clients = PeerClients(
            identity,
            addresses,
            self._pems,
            call_timeout=self.settings.call_timeout,
            chunk_bytes=self.settings.chunk_bytes,
        )
        self._closed = False
        self._probe_files = IdentityFiles(identity.cert_pem, identity.key_pem)

        host, port = parse_address(listen, f"the listen address of '{self.party}'")
        check_port_free(self.party, host, port)
        root = b"".join(self._pems.values())
        try:
            self._server = _InboxServer(
                self,
                f"grpc+tls://{format_address(host, port)}",
                tls_certificates=[(identity.cert_pem, identity.key_pem)],
                verify_client=True,
                root_certificates=root,
            )
        except (pa.ArrowException, OSError) as exc:
            raise TransportError(
                cannot_listen(self.party, format_address(host, port), first_line(exc))
            ) from exc
        self.port = self._server.port
        self.address = format_address(host, self.port)
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
        self._clients.close()
        with contextlib.suppress(Exception):
            self._server.shutdown()
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
            check_envelope(
                env,
                signed,
                signature,
                tls_identity,
                me=self.party,
                job_id=self.job_id,
                certificates=self._certs,
                max_bytes=self.settings.max_message_bytes,
            )
            payload = read_payload(env, reader.schema, (chunk.data for chunk in reader))
        except IntegrityError as exc:
            log.warning(
                "party '%s' refused message '%s' claimed from '%s': %s", self.party, env.tag, env.sender, exc
            )
            self._mailbox.reject(Rejection(env.sender, env.tag, str(exc), time.time()))
            raise
        self._clients.reached_us(env.sender)
        if self._mailbox.put(env.sender, env.tag, payload):
            log.debug("received '%s' from '%s' (%d bytes)", env.tag, env.sender, len(payload))
            return "stored"
        log.info("dropped a resent copy of '%s' from '%s' (first copy wins)", env.tag, env.sender)
        return "duplicate"

    def _recv_bytes(self, frm: str, tag: str, timeout: float) -> bytes:
        peer = self._peer(frm)
        payload = self._mailbox.take(frm, tag, timeout)
        if payload is not None:
            return payload
        head = f"party '{frm}' at {peer.address} did not send '{tag}' to '{self.party}' within {timeout:g} s"
        refused = [r for r in self._mailbox.rejections() if r.claimed_sender == frm]
        if refused:
            head += f" ({len(refused)} message(s) claiming to come from it were refused, the last: {refused[-1].reason})"
        elif (problem := self._pin_problem(frm)) is not None:
            # A handshake our inbox refused never reaches vfl (gRPC only logs it on stderr), so a
            # peer whose pins disagree with ours looks silent: say so instead of just timing out.
            raise PeerTimeoutError(f"{head}, and it cannot: {problem}")
        raise PeerTimeoutError(f"{head}; check that it is running and that every party runs the same job")

    def _pin_problem(self, frm: str) -> str | None:
        """Why ``frm`` cannot reach us, if a TLS probe shows our pins and its disagree; None otherwise."""
        if self._clients.has_reached_us(frm):
            return None  # it reached our inbox before: both sides pin each other
        try:
            status = self.probe(frm)
        except Exception:  # noqa: BLE001 - a diagnosis must never hide the time-out itself
            return None
        if status.problem and status.permanent:
            log.warning("party '%s' hears nothing from '%s': %s", self.party, frm, status.problem)
            return status.problem
        return None

    # ---- sending

    def _peer(self, party_id: str) -> Peer:
        peer = self._peers.get(party_id)
        if peer is None:
            raise ConfigError(f"unknown peer '{party_id}'; the federation of '{self.party}' has {self.peers}")
        return peer

    def _put_raw(self, to: str, command: bytes, payload: bytes) -> str:
        """One ``do_put`` attempt of an already sealed message; returns the inbox's answer."""
        return self._clients.put(to, command, payload)

    def _send_bytes(self, to: str, tag: str, payload: bytes) -> None:
        self._peer(to)  # an unknown peer is a ConfigError before anything else
        limit = self.settings.max_message_bytes
        if len(payload) > limit:
            raise TransportError(
                f"message '{tag}' to '{to}' is {size_text(len(payload))}, over the {size_text(limit)} message "
                "size limit; send it in smaller parts or raise max_message_bytes at every party"
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
        """Send a sealed message, retrying transient failures under the channel's retry policy.

        The deadline is ``first_contact`` until the peer has answered once, then ``connect_deadline``
        (or ``deadline`` if given). Separate from ``_send_bytes`` so fault tests can deliver forged
        or altered messages.
        """
        peer = self._peer(to)
        s = self.settings
        first = deadline is None and not self._clients.has_answered(to)
        if deadline is None:
            deadline = max(s.first_contact, s.connect_deadline) if first else s.connect_deadline
        policy = s.retry_policy(deadline)
        where = f"peer '{peer.party_id}' at {peer.address}"
        next_report = PROGRESS_EVERY

        def attempt() -> str:
            try:
                return self._put_raw(peer.party_id, command, payload)
            except flight.FlightUnauthorizedError as exc:  # the inbox answered: it refused the message
                self._clients.answered(peer.party_id)
                raise TransportError(f"{where} refused message '{tag}': {server_reason(exc)}") from exc
            except (flight.FlightUnauthenticatedError, flight.FlightCancelledError) as exc:
                raise TransportError(f"{where} refused message '{tag}': {first_line(exc)}") from exc
            except policy.transient:
                raise
            except (flight.FlightError, pa.ArrowException) as exc:
                self._clients.drop(peer.party_id)
                raise TransportError(f"sending '{tag}' to {where} failed: {first_line(exc)}") from exc

        def on_failure(failure: Failure) -> None:
            nonlocal next_report
            self._clients.drop(peer.party_id)
            self._raise_if_misconfigured(peer, failure.error)
            level = logging.DEBUG if first else logging.INFO  # before first contact: the progress line below
            log.log(
                level,
                "attempt %d to send '%s' to '%s' failed: %s",
                failure.attempt,
                tag,
                peer.party_id,
                first_line(failure.error),
            )
            if first and failure.elapsed >= next_report:
                log.info(
                    "waiting for party '%s' at %s to start (%.0f s of %g s)",
                    peer.party_id,
                    peer.address,
                    failure.elapsed,
                    deadline,
                )
                while next_report <= failure.elapsed:
                    next_report += PROGRESS_EVERY

        try:
            answer = policy.run(attempt, on_failure=on_failure)
        except RetriesExhausted as exc:
            since = f"; it has not answered once since '{self.party}' started" if first else ""
            raise TransportError(
                f"{where} did not answer within {deadline:g} s (tried {exc.attempts} times{since}): "
                "check that it is running and listening on that address"
            ) from exc.last.error
        self._clients.answered(peer.party_id)
        log.debug("sent '%s' to '%s' (%d bytes, %s)", tag, peer.party_id, len(payload), answer)

    # ---- diagnosing TLS failures

    def _raise_if_misconfigured(self, peer: Peer, exc: BaseException) -> None:
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
        return probe_peer(
            me=self.party,
            my_fingerprint=self.identity.fingerprint,
            files=self._probe_files,
            party_id=party_id,
            address=peer.address,
            pinned=fingerprint(self._certs[party_id]),
            timeout=self.settings.probe_timeout,
        )
