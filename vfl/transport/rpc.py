"""Request and answer over one mutual-TLS Flight ``do_action``: the control plane of a party service.

A job's messages go one way (``do_put`` into the receiver's inbox, ``flight.py``); a service's
control messages (propose a job, start it, cancel it, ask its state) want an answer at once, and
the asking party may have no inbox of its own running (a guest that submits a job). So a control
message is one ``do_action``: the request and the answer each carry a signed envelope
(``envelope.py``) for the reserved job id ``SERVICE_JOB``, checked as a job message is (pinned
sender, its certificate, signature, receiver, size, SHA-256 of the bytes).

* ``RpcServer``: the service's Flight server on the party's address. TLS authenticates the server
  only; the caller's certificate travels in the request, and before any other work the server
  checks that its fingerprint is pinned, that it is the claimed sender's and that the request is
  signed with its key. A refused request (an unpinned certificate, a forged signature) is kept
  (``rejections``, with the certificate's fingerprint) and passed to ``on_reject`` so the service
  can record it: a TLS layer that refused the handshake would leave nothing to record. (Flight
  offers no "request a client certificate but do not verify it" mode, so the pin is checked here;
  the per-job data channel of ``flight.py`` stays pinned at the TLS layer.)
* ``RpcChannel``: a ``Channel`` for the asking side: ``send`` makes the call and files the answer,
  ``recv`` takes it (it never waits: the answer came with the call). Protocols speak through it
  with a ``Session`` like over any channel.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vfl.errors import ConfigError, IntegrityError, ProtocolError, TransportError
from vfl.transport.address import format_address, parse_address
from vfl.transport.channel import Channel
from vfl.transport.clients import PeerClients
from vfl.transport.envelope import MiB, check_envelope, seal, unseal
from vfl.transport.peers import Peer
from vfl.transport.probe import REFUSED, IdentityFiles, cannot_listen, first_line, probe_peer, server_reason
from vfl.transport.tls import PartyIdentity, fingerprint, fingerprint_der, party_dns_name

log = logging.getLogger(__name__)

SERVICE_JOB = "vfl-service"  # the job id every control message is signed for
ACTION = "vfl.message"
MAX_CONTROL_BYTES = 16 * MiB

Handler = Callable[[str, str, bytes], tuple[str, bytes]]  # (sender, tag, payload) -> (answer tag, payload)


@dataclass(frozen=True)
class CallRejection:
    """A control call refused before any other work: who it claimed to be, the certificate it showed."""

    claimed_sender: str
    tag: str
    reason: str
    at: float
    fingerprint: str  # "sha256:<hex>" of the certificate the caller presented ("" if it showed none)


def frame(command: bytes, payload: bytes) -> bytes:
    """One buffer: the envelope's length, the envelope, the payload."""
    return struct.pack(">I", len(command)) + command + payload


def unframe(body: bytes) -> tuple[bytes, bytes]:
    if len(body) < 4:
        raise IntegrityError("the control message is shorter than its header")
    (n,) = struct.unpack(">I", body[:4])
    if 4 + n > len(body):
        raise IntegrityError("the control message is shorter than its envelope")
    return body[4 : 4 + n], body[4 + n :]


def _verify(
    body: bytes, tls_identity: bytes, *, me: str, certificates: dict[str, x509.Certificate]
) -> tuple[str, str, bytes]:
    """``(sender, tag, payload)`` of a framed, signed control message, or ``IntegrityError``."""
    command, payload = unframe(body)
    env, signed, signature = unseal(command)
    check_envelope(
        env, signed, signature, tls_identity, me=me, job_id=SERVICE_JOB, certificates=certificates,
        max_bytes=MAX_CONTROL_BYTES,
    )  # fmt: skip
    if len(payload) != env.size or hashlib.sha256(payload).hexdigest() != env.sha256:
        raise IntegrityError(
            f"message '{env.tag}' from '{env.sender}' does not match its signed size and SHA-256"
        )
    return env.sender, env.tag, payload


def pinned_owner(presented: bytes, certificates: dict[str, x509.Certificate]) -> str:
    """The party whose pinned certificate is ``presented`` (DER), or ``IntegrityError`` naming its fingerprint."""
    if not presented:
        raise IntegrityError("the caller presented no certificate")
    shown = fingerprint_der(presented)
    for party, cert in certificates.items():
        if fingerprint(cert) == shown:
            return party
    raise IntegrityError(f"the caller's certificate {shown} is not pinned by this party")


def _claimed(body: bytes) -> tuple[str, str]:
    """Who a refused request claimed to come from, and its tag (``?`` where unreadable)."""
    with contextlib.suppress(Exception):
        env = unseal(unframe(unframe(body)[1])[0])[0]
        return _printable(env.sender), _printable(env.tag)
    return "?", "?"


def _printable(text: object, limit: int = 120) -> str:
    """A caller's claim as one short printable line (it goes into our log and store as it came)."""
    line = "".join(c if c.isprintable() else "?" for c in str(text))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _pinned(
    identity: PartyIdentity, peers: Iterable[Peer]
) -> tuple[dict[str, Peer], dict[str, x509.Certificate]]:
    by_id: dict[str, Peer] = {}
    certs: dict[str, x509.Certificate] = {}
    for peer in peers:
        if peer.party_id == identity.party_id:
            continue
        if peer.party_id in by_id:
            raise ConfigError(f"peer '{peer.party_id}' is listed twice")
        by_id[peer.party_id] = peer
        certs[peer.party_id] = peer.load_certificate()
    if not by_id:
        raise ConfigError(f"party '{identity.party_id}' has no peers to talk to")
    return by_id, certs


class RpcServer(flight.FlightServerBase):
    """A party service's control endpoint: verified requests in, signed answers out."""

    def __init__(
        self,
        identity: PartyIdentity,
        peers: Iterable[Peer],
        listen: str,
        handler: Handler,
        *,
        on_reject: Callable[[CallRejection], None] | None = None,
    ) -> None:
        self.identity = identity
        self._peers, self._certs = _pinned(identity, peers)
        self._handler = handler
        self._on_reject = on_reject
        self._rejections: list[CallRejection] = []
        host, port = parse_address(listen, f"the listen address of '{identity.party_id}'")
        where = format_address(host, port)
        try:  # the pin is checked per call (do_action), so that a refusal can be recorded
            super().__init__(f"grpc+tls://{where}", tls_certificates=[(identity.cert_pem, identity.key_pem)])
        except (pa.ArrowException, OSError) as exc:
            raise TransportError(cannot_listen(identity.party_id, where, first_line(exc))) from exc
        self.address = format_address(host, self.port)

    @property
    def rejections(self) -> list[CallRejection]:
        return list(self._rejections)

    def _reject(self, sender: str, tag: str, reason: str, shown: str) -> None:
        rejection = CallRejection(sender, tag, reason, time.time(), shown)
        self._rejections = [*self._rejections[-99:], rejection]
        log.warning("refused a control message '%s' claimed from '%s': %s", tag, sender, reason)
        if self._on_reject is not None:
            with contextlib.suppress(Exception):
                self._on_reject(rejection)

    def do_action(self, context, action):  # noqa: ANN001, ANN201 (Flight callback)
        if action.type != ACTION:
            raise flight.FlightServerError(f"unknown action {action.type!r}")
        body = action.body.to_pybytes()
        shown = ""
        try:
            presented, request = unframe(body)
            shown = fingerprint_der(presented) if presented else ""
            owner = pinned_owner(presented, self._certs)  # before anything else is read
            sender, tag, payload = _verify(
                request, party_dns_name(owner).encode(), me=self.identity.party_id, certificates=self._certs
            )
        except IntegrityError as exc:
            claimed, tag = _claimed(body)
            self._reject(claimed, tag, str(exc), shown)
            raise flight.FlightUnauthorizedError(REFUSED + str(exc)) from None
        try:
            answer_tag, answer = self._handler(sender, tag, payload)
        except Exception as exc:  # noqa: BLE001 - the peer gets one line, the log the rest
            log.exception("control message '%s' from '%s' failed", tag, sender)
            raise flight.FlightServerError(REFUSED + " ".join(str(exc).split())) from None
        command = seal(self.identity, SERVICE_JOB, sender, answer_tag, answer)
        return iter([flight.Result(pa.py_buffer(frame(command, answer)))])

    def list_actions(self, context):  # noqa: ANN001, ANN201
        return [(ACTION, "a signed vfl control message")]


class RpcChannel(Channel):
    """The asking side of the control plane: each ``send`` is a call, its answer waits for ``recv``."""

    def __init__(
        self,
        identity: PartyIdentity,
        peers: Iterable[Peer],
        *,
        call_timeout: float = 30.0,
        connect_deadline: float = 10.0,
        probe_timeout: float = 3.0,
    ) -> None:
        super().__init__(identity.party_id)
        self.identity = identity
        self._peers, self._certs = _pinned(identity, peers)
        pems = {p: c.public_bytes(Encoding.PEM) for p, c in self._certs.items()}
        self._clients = PeerClients(
            identity,
            {p: peer.address for p, peer in self._peers.items()},
            pems,
            call_timeout=call_timeout,
            chunk_bytes=4 * MiB,
        )
        self._call_timeout = call_timeout
        self._connect_deadline = connect_deadline
        self._probe_timeout = probe_timeout
        self._answers: dict[tuple[str, str], bytes] = {}
        self._files = IdentityFiles(identity.cert_pem, identity.key_pem)

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    def address_of(self, party_id: str) -> str:
        return self._peer(party_id).address

    def _peer(self, party_id: str) -> Peer:
        if party_id not in self._peers:
            raise ConfigError(f"unknown peer '{party_id}'; the federation of '{self.party}' has {self.peers}")
        return self._peers[party_id]

    def _send_bytes(self, to: str, tag: str, payload: bytes) -> None:
        peer = self._peer(to)
        where = f"party '{to}' at {peer.address}"
        command = seal(self.identity, SERVICE_JOB, to, tag, payload)
        der = self.identity.certificate.public_bytes(Encoding.DER)
        action = flight.Action(ACTION, frame(der, frame(command, payload)))  # our certificate, then the call
        options = flight.FlightCallOptions(timeout=self._call_timeout)
        deadline = time.monotonic() + self._connect_deadline
        delay = 0.1
        while True:
            try:
                results = list(self._clients.get(to).do_action(action, options=options))
                break
            except flight.FlightUnauthorizedError as exc:
                raise TransportError(f"{where} refused '{tag}': {server_reason(exc)}") from None
            except flight.FlightServerError as exc:
                text = server_reason(exc)
                if "unknown action" in text or "NotImplemented" in text or "not implemented" in text.lower():
                    raise TransportError(f"{where} is not serving (it runs a job, not 'vfl serve')") from None
                raise TransportError(f"{where} could not handle '{tag}': {text}") from None
            except (flight.FlightUnavailableError, flight.FlightTimedOutError) as exc:
                self._clients.drop(to)
                if time.monotonic() >= deadline:
                    raise TransportError(f"{where} did not answer: {self._diagnose(to, exc)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except (flight.FlightError, pa.ArrowException) as exc:
                self._clients.drop(to)
                text = first_line(exc)
                if "NotImplementedError" in str(exc) or "unknown action" in str(exc):
                    raise TransportError(f"{where} is not serving (it runs a job, not 'vfl serve')") from None
                raise TransportError(f"{where} failed on '{tag}': {text}") from None
        if len(results) != 1:
            raise ProtocolError(f"{where} answered '{tag}' with {len(results)} results, expected one")
        try:
            sender, answer_tag, answer = _verify(
                results[0].body.to_pybytes(),
                party_dns_name(to).encode(),  # the TLS connection pinned this peer's certificate
                me=self.party,
                certificates=self._certs,
            )
        except IntegrityError as exc:
            raise ProtocolError(f"{where} sent an answer to '{tag}' that fails its checks: {exc}") from None
        if sender != to:
            raise ProtocolError(f"{where} answered for '{sender}'")
        self._answers[(to, answer_tag)] = answer

    def _diagnose(self, to: str, exc: BaseException) -> str:
        peer = self._peer(to)
        pinned, mine = fingerprint(self._certs[to]), self.identity.fingerprint
        try:
            status = probe_peer(
                me=self.party, my_fingerprint=mine, files=self._files, party_id=to, address=peer.address,
                pinned=pinned, timeout=self._probe_timeout,
            )  # fmt: skip
        except Exception:  # noqa: BLE001 - the diagnosis must not hide the failure
            return first_line(exc)
        if status.problem:
            return status.problem
        return f"{first_line(exc)}; is 'vfl serve' running there?"

    def _recv_bytes(self, frm: str, tag: str, timeout: float) -> bytes:
        try:
            return self._answers.pop((frm, tag))
        except KeyError:
            raise ProtocolError(f"party '{frm}' did not answer with '{tag}'") from None

    def close(self) -> None:
        self._clients.close()
        self._files.cleanup()

    def __enter__(self) -> RpcChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AnswerChannel(Channel):
    """The serving side of one call: ``recv`` gives the request, ``send`` keeps the answer."""

    def __init__(self, party: str, sender: str, tag: str, payload: bytes) -> None:
        super().__init__(party)
        self._request = (sender, tag, payload)
        self.answer: tuple[str, bytes] | None = None

    def _recv_bytes(self, frm: str, tag: str, timeout: float) -> bytes:
        sender, want, payload = self._request
        if (frm, tag) != (sender, want):
            raise ProtocolError(f"expected '{tag}' from '{frm}', the call is '{want}' from '{sender}'")
        return payload

    def _send_bytes(self, to: str, tag: str, payload: bytes) -> None:
        if to != self._request[0] or self.answer is not None:
            raise ProtocolError("a control call has one answer, to its caller")
        self.answer = (tag, payload)


__all__ = ["ACTION", "SERVICE_JOB", "AnswerChannel", "CallRejection", "RpcChannel", "RpcServer"]
