"""A party's networked channel, built from its workspace (``party.toml``) and ``federation.toml``.

This is where configuration meets the Flight transport: the federation's cards become pinned
``Peer`` objects, and the party's own card is checked against its key and certificate before any
connection is made, so a stale federation file fails with one clear line instead of a refused
handshake at every peer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from vfl.config import ROLES, Federation, PartyConfig, PeerCard
from vfl.errors import ConfigError, KeyFileError
from vfl.transport.tls import PartyIdentity, load_identity, normalize_fingerprint

if TYPE_CHECKING:  # pyarrow.flight is heavy; imported only where a channel is made
    from vfl.transport.flight import FlightChannel, FlightSettings, Peer


def peers_by_role(federation: Federation) -> dict[str, list[str]]:
    """``{"guest": [...], "host": [...], "arbiter": [...]}``: party ids per role, in file order."""
    return {role: [card.id for card in federation.with_role(role)] for role in ROLES}


def to_peer(card: PeerCard) -> Peer:
    """The transport's view of a federation card (the certificate PEM travels in the card)."""
    from vfl.transport.flight import Peer

    return Peer(card.id, card.role, card.address, card.certificate, card.fingerprint)


def to_peers(federation: Federation) -> list[Peer]:
    return [to_peer(card) for card in federation.parties]


def check_card(card: PeerCard, where: str) -> PeerCard:
    """Check a card's certificate against its own pin and id; return it with a canonical fingerprint.

    Done when a card is added to a federation, so a damaged or hand-edited card is refused at
    once (naming ``where``, usually the card file) rather than when a job starts.
    """
    try:
        pinned = normalize_fingerprint(card.fingerprint)
        to_peer(replace(card, fingerprint=pinned)).load_certificate()
    except (ConfigError, KeyFileError) as exc:
        raise KeyFileError(f"{where}: {exc}") from exc
    return replace(card, fingerprint=pinned)


def verify_membership(
    party: PartyConfig,
    federation: Federation,
    identity: PartyIdentity,
    where: str = "the federation file",
) -> PeerCard:
    """The party's own card, after checking the federation lists it with its role and certificate.

    ``where`` names the federation file in messages.
    """
    card = next((c for c in federation.parties if c.id == party.id), None)
    if card is None:
        known = ", ".join(c.id for c in federation.parties) or "none"
        raise ConfigError(
            f"party '{party.id}' is not in {where} (parties: {known}); "
            f"add its card with 'vfl federation add {party.workspace / 'card.toml'}'"
        )
    if card.role != party.role:
        raise ConfigError(
            f"{where} lists '{party.id}' as {card.role}, but its workspace {party.workspace} says {party.role}"
        )
    pinned = normalize_fingerprint(card.fingerprint)
    if pinned != identity.fingerprint:
        raise KeyFileError(
            f"{where} pins {pinned} for '{party.id}' but this workspace's certificate is "
            f"{identity.fingerprint}; re-run 'vfl federation add' with the new card"
        )
    return card


def load_party_identity(party: PartyConfig) -> PartyIdentity:
    """The party's key and certificate from its workspace, checked to name this party."""
    return load_identity(party.key, party.certificate, party_id=party.id)


def open_channel(
    party: PartyConfig,
    federation: Federation,
    *,
    job_id: str,
    settings: FlightSettings | None = None,
    listen: str | None = None,
    where: str = "the federation file",
) -> FlightChannel:
    """Start the party's Flight inbox and connect it to every other party of the federation.

    Loads the party's identity, checks its own card in the federation (role and pinned
    fingerprint), pins every peer's certificate from its card, and listens on ``party.listen``
    (or ``listen``, e.g. ``127.0.0.1:0`` for a short-lived diagnostic channel). The caller closes
    the channel (it is a context manager).
    """
    from vfl.transport.flight import FlightChannel

    identity = load_party_identity(party)
    verify_membership(party, federation, identity, where)
    return FlightChannel(
        identity,
        to_peers(federation),
        job_id=job_id,
        listen=listen or party.listen,
        settings=settings,
    )
