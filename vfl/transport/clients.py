"""The sending side of a ``FlightChannel``: one mutual-TLS Flight client per peer (DESIGN.md §10).

A client is made on first use and dropped after a failure, so the next attempt opens a fresh
connection. ``put`` is one ``do_put`` attempt of an already sealed message; retrying is the
channel's business (``retry.py``). The pool also remembers which peers have answered at least once
(first contact is over) and which have reached this party's inbox.
"""

from __future__ import annotations

import contextlib
import threading

import pyarrow.flight as flight

from vfl.errors import TransportError
from vfl.transport.address import format_address, parse_address
from vfl.transport.envelope import CHUNK_SCHEMA, chunk_batches
from vfl.transport.tls import PartyIdentity, party_dns_name


class PeerSet:
    """A set of peer ids that the channel's threads add to and ask about."""

    def __init__(self) -> None:
        self._peers: set[str] = set()
        self._lock = threading.Lock()

    def add(self, peer: str) -> None:
        with self._lock:
            self._peers.add(peer)

    def has(self, peer: str) -> bool:
        with self._lock:
            return peer in self._peers


class PeerClients:
    """Flight clients of party ``identity`` to its peers at ``addresses``, each trusting only its pinned PEM."""

    def __init__(
        self,
        identity: PartyIdentity,
        addresses: dict[str, str],
        pems: dict[str, bytes],
        *,
        call_timeout: float,
        chunk_bytes: int,
    ) -> None:
        self.identity = identity
        self._addresses = addresses
        self._pems = pems
        self._call_timeout = call_timeout
        self._chunk_bytes = chunk_bytes
        self._clients: dict[str, flight.FlightClient] = {}
        self._answered = PeerSet()
        self._heard = PeerSet()
        self._lock = threading.Lock()
        self._closed = False

    def get(self, to: str) -> flight.FlightClient:
        with self._lock:
            if self._closed:
                raise TransportError(f"the channel of '{self.identity.party_id}' is closed")
            client = self._clients.get(to)
            if client is None:
                host, port = parse_address(self._addresses[to])
                client = flight.FlightClient(
                    f"grpc+tls://{format_address(host, port)}",
                    tls_root_certs=self._pems[to],
                    cert_chain=self.identity.cert_pem,
                    private_key=self.identity.key_pem,
                    override_hostname=party_dns_name(to),
                    # A fresh channel after a failure must not inherit gRPC's shared reconnect back-off.
                    generic_options=[("grpc.use_local_subchannel_pool", 1)],
                )
                self._clients[to] = client
            return client

    def drop(self, to: str) -> None:
        """Close the client of ``to`` (after a failure): the next ``get`` connects afresh."""
        with self._lock:
            client = self._clients.pop(to, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        """Close every client; later ``get`` calls fail. Safe to call twice."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    def put(self, to: str, command: bytes, payload: bytes) -> str:
        """One ``do_put`` of a sealed message (``command``) in chunks; returns the inbox's answer."""
        client = self.get(to)
        options = flight.FlightCallOptions(timeout=self._call_timeout)
        writer, reader = client.do_put(
            flight.FlightDescriptor.for_command(command), CHUNK_SCHEMA, options=options
        )
        try:
            for batch in chunk_batches(payload, self._chunk_bytes):
                writer.write_batch(batch)
            writer.done_writing()
            answer = reader.read()
        finally:
            writer.close()
        return answer.to_pybytes().decode() if answer is not None else ""

    def has_answered(self, to: str) -> bool:
        """Whether ``to`` answered a ``put`` of ours at least once (its first contact is over)."""
        return self._answered.has(to)

    def answered(self, to: str) -> None:
        self._answered.add(to)

    def has_reached_us(self, frm: str) -> bool:
        """Whether a message of ``frm`` reached our inbox (then both sides pin each other)."""
        return self._heard.has(frm)

    def reached_us(self, frm: str) -> None:
        self._heard.add(frm)
