"""Per-customer segment labels at the guest for a guest and 1..N hosts (DESIGN.md §14, "Membership release").

Used by a ``segment`` job with ``membership = "guest"`` and by ``vfl predict`` with a segment model;
both need every host's policy to allow it. ``T`` is the guest's lookup table (``k_g x k_1 x ... x
k_N``, entry ``segment + 1``, 0 for a withheld cell); row ``i`` has local clusters ``g_i, h1_i, ...,
hN_i``, each known only to its owner. A chain of selections under each host's key in turn, with
additive masks, hands the row's entry on without anyone seeing a local cluster:

1. host ``j`` sends its local cluster of every row as an *unpacked* encrypted one-hot vector
   ``[[1{h_j,i = b}]]_j`` (``k_j`` ciphertexts per row, ``segment.onehot``);
2. stage 1: the guest selects ``[[T[g_i, h1_i, c]]]_1 = prod_b [[1{h1_i = b}]]^T[g_i, b, c]`` for every
   combination ``c`` of the later hosts' clusters, adds a mask ``r_1[i, c]`` (40 bits wider than a
   segment id) and rerandomizes (``segment.masked-label``); host 1 decrypts ``S_1 = T[g_i, h1_i, .] +
   r_1`` -- it and the guest now hold additive shares of the row's remaining table;
3. stage ``j >= 2``: the guest forwards host ``j``'s key and one-hot to host ``j - 1``
   (``segment.relay``), which selects its own share by it, ``[[S_{j-1}[h_j, .]]]_j`` under host ``j``'s
   key, rerandomized (``segment.select``); the guest multiplies in the same selection of its own share
   ``-r_{j-1}``, adds a fresh mask ``r_j`` and rerandomizes (``segment.masked-label`` to host ``j``);
4. the last host decrypts ``T[g_i, h1_i, ..., hN_i] + r_N[i]`` and returns it (``segment.label``); the
   guest removes ``r_N``.

With one host this is one selection, one masked decryption. What each party sees: the guest, ciphertexts
under keys it does not hold and the final ``segment + 1`` of every row; a host, its own decryptions,
every one masked by a fresh 40-bit-wider mask, and ciphertexts under another host's key. The hosts are
assumed not to collude (as everywhere in vfl). Cost per row: ``k_j`` encryptions at every host; at the
guest ``M_1 = k_2 ... k_N`` rerandomized selections for host 1 and ``M_j = k_{j+1} ... k_N`` for host
``j``; host ``j`` decrypts ``M_j`` values.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import gmpy2
import numpy as np
import pyarrow as pa
from gmpy2 import mpz

from vfl.analytics import crosstab as ct
from vfl.crypto import PrivateKey, PublicKey, RandomnessPool, WorkerPool, ints_from_arrow, ints_to_arrow
from vfl.crypto.arrow import KIND, ciphertext_table, table_ciphertexts
from vfl.crypto.randomness import randomizers
from vfl.errors import ConfigError, IntegrityError
from vfl.protocols.messages import BOOL, FIXED, Message, message, one
from vfl.protocols.session import PUBLIC_KEY, Session
from vfl.segmentation.options import SegmentPolicy

POLICY = message("segment.policy", "segment/policy", "host", "guest",
                 "each host's segmentation policy (membership release, shared means)",
                 rows=1, release_membership=BOOL, share_means=BOOL)  # fmt: skip
_CHAIN = (  # name, tag under segment/labels/, sender, receiver, its field, what the receiver learns
    ("onehot", "onehot", "host", "guest", "ciphertext",
     "nothing from the encrypted one-hot local clusters (membership release only)"),
    ("masked-label", "masked", "guest", "host", "ciphertext",
     "nothing (its share of every row's remaining lookup entries, statistically masked)"),
    ("relay", "relay", "guest", "host", "ciphertext",
     "nothing (the next host's one-hot local clusters, encrypted under that host's key)"),
    ("select", "select", "host", "guest", "ciphertext",
     "nothing (a host's masked share selected by the next host's cluster, under that host's key)"),
    ("label", "unmasked", "host", "guest", "value",
     "the final segment of every shared customer (only when every host's policy allows membership release)"),
)  # fmt: skip
LABEL_MESSAGES = tuple(
    message(f"segment.{name}", f"segment/labels/{tag}", frm, to, learns, **{column: FIXED})
    for name, tag, frm, to, column, learns in _CHAIN
)
ONEHOT, MASKED_LABEL, RELAY, SELECT, LABEL = LABEL_MESSAGES

MASK_BITS = 40  # statistical hiding of a masked share


def select(onehot: Sequence[mpz], weights: np.ndarray, n_square: mpz) -> list[mpz]:
    """``[[W[i, h_i, c]]]`` for every row ``i`` and column ``c``: ``prod_b [[1{h_i = b}]]^W[i, b, c]``.

    ``onehot`` holds ``k`` ciphertexts per row (row-major), ``weights`` is ``(n, k, M)`` of non-negative
    integers; the result is row-major ``(n, M)``. A zero weight is skipped (its factor is 1).
    """
    n, k, m = weights.shape
    w = weights.tolist()
    out = []
    for i in range(n):
        base = i * k
        for c in range(m):
            acc = mpz(1)
            for b in range(k):
                e = w[i][b][c]
                if e:
                    acc = acc * gmpy2.powmod(onehot[base + b], e, n_square) % n_square
            out.append(acc)
    return out


def masks(shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Uniform masks below ``2^bits`` (cryptographic randomness), as an int64 array (``bits <= 62``)."""
    bound = 1 << bits
    return np.array([secrets.randbelow(bound) for _ in range(int(np.prod(shape)))], dtype=np.int64).reshape(
        shape
    )


def add_and_rerandomize(
    cts: Sequence[mpz], plain: Sequence[int], pk: PublicKey, workers: WorkerPool | None
) -> list[mpz]:
    """``[[x + p]]`` with a fresh randomizer: the receiver cannot trace the result to the inputs."""
    n, n2 = pk.n, pk.n_square
    rands = randomizers(pk, len(cts), workers)
    return [c * ((1 + int(p) * n) % n2) % n2 * r % n2 for c, p, r in zip(cts, plain, rands, strict=True)]


def _ciphertexts(
    session: Session, msg: Message, frm: str, pk: PublicKey, per_row: int | None, n_rows: int
) -> list[mpz]:
    cts = table_ciphertexts(session.recv(msg, frm), pk, f"{msg.name} from {frm!r}")
    if per_row is None:
        if n_rows == 0 or len(cts) % n_rows:
            raise IntegrityError(f"{msg.name} from {frm!r}: {len(cts)} ciphertexts for {n_rows} rows")
    elif len(cts) != n_rows * per_row:
        raise IntegrityError(
            f"expected {n_rows * per_row} ciphertexts in {msg.name} from {frm!r}, got {len(cts)}"
        )
    return cts


def labels_guest(
    session: Session,
    hosts: Sequence[str],
    keys: dict[str, PublicKey],
    labels: np.ndarray,
    lookup: np.ndarray,
    workers: WorkerPool | None = None,
) -> np.ndarray:
    """The guest's side of the chain: the final segment (-1: withheld) of every aligned row."""
    hosts = list(hosts)
    if lookup.ndim != len(hosts) + 1:
        raise ConfigError(
            f"the segment lookup has {lookup.ndim - 1} host axes but the job has {len(hosts)} hosts"
        )
    n = len(labels)
    entries = (lookup + 1)[np.asarray(labels, dtype=np.int64)]  # (n, k_1, ..., k_N), 0: withheld
    bits = MASK_BITS + int(entries.max(initial=0)).bit_length()
    share = None  # the guest's mask of the current holder's share, (n, k_j, M_j)
    for j, h in enumerate(hosts):
        pk = keys[h]
        k_j = lookup.shape[j + 1]
        onehot = _ciphertexts(session, ONEHOT, h, pk, k_j, n)
        if j == 0:
            selected = select(onehot, entries.reshape(n, k_j, -1), pk.n_square)
        else:
            prev = hosts[j - 1]
            session.send(PUBLIC_KEY, prev, pk.to_arrow(), gen=0, owner=h)
            session.send(RELAY, prev, ciphertext_table(onehot, pk, {KIND: b"segment.relay"}))
            theirs = _ciphertexts(session, SELECT, prev, pk, share.shape[2], n)
            mine = select(onehot, share, pk.n_square)  # [[r_{j-1}[h_j, c]]]
            n2 = pk.n_square
            selected = [t * gmpy2.invert(m, n2) % n2 for t, m in zip(theirs, mine, strict=True)]
        rest = int(np.prod(lookup.shape[j + 2 :], dtype=np.int64))
        r = masks((n, rest), bits)
        out = add_and_rerandomize(selected, r.ravel().tolist(), pk, workers)
        session.send(MASKED_LABEL, h, ciphertext_table(out, pk, {KIND: b"segment.masked-label"}))
        if j + 1 < len(hosts):
            share = r.reshape(n, lookup.shape[j + 2], -1)
    values = ints_from_arrow(session.recv(LABEL, hosts[-1]))
    if len(values) != n:
        raise IntegrityError(f"expected {n} labels from {hosts[-1]!r}, got {len(values)}")
    seg = np.array([v - int(m) for v, m in zip(values, r.ravel().tolist(), strict=True)], dtype=np.int64) - 1
    if seg.size and (seg.min() < -1 or seg.max() > int(lookup.max())):
        raise IntegrityError(f"the labels from {hosts[-1]!r} do not decode to segments")
    return seg


def labels_host(
    session: Session,
    guest: str,
    labels: np.ndarray,
    k_h: int,
    keypair: tuple[PublicKey, PrivateKey],
    hosts: Sequence[str],
    workers: WorkerPool | None = None,
) -> None:
    """A host's side of the chain (``hosts``: the job's hosts in order, this party among them)."""
    pk, sk = keypair
    n = len(labels)
    flat = np.zeros((n, k_h), dtype=np.int64)
    flat[np.arange(n), np.asarray(labels, dtype=np.int64)] = 1
    pool = RandomnessPool(sk, workers)
    pool.fill(flat.size)
    cts = ct.encrypt_rows(pk, flat.ravel().tolist(), randomness=pool)
    session.send(ONEHOT, guest, ciphertext_table(cts, pk, {KIND: b"segment.onehot"}))
    masked = _ciphertexts(session, MASKED_LABEL, guest, pk, None, n)
    shares = [int(p) for p in sk.decrypt_raw(masked, workers)]
    position = list(hosts).index(session.party)
    if position == len(hosts) - 1:
        if len(shares) != n:
            raise IntegrityError(f"expected {n} masked labels from {guest!r}, got {len(shares)}")
        session.send(LABEL, guest, ints_to_arrow(shares))
        return
    nxt = hosts[position + 1]
    pk_next = PublicKey.from_arrow(session.recv(PUBLIC_KEY, guest, gen=0, owner=nxt))
    onehot = _ciphertexts(session, RELAY, guest, pk_next, None, n)
    k_next, m = len(onehot) // n, len(shares) // n
    if m % k_next:
        raise IntegrityError(f"the relayed one-hot of {nxt!r} does not fit the {m} shares per row")
    weights = np.array(shares, dtype=object).reshape(n, k_next, m // k_next)
    out = add_and_rerandomize(
        select(onehot, weights, pk_next.n_square), [0] * (n * m // k_next), pk_next, workers
    )
    session.send(SELECT, guest, ciphertext_table(out, pk_next, {KIND: b"segment.select"}))


def send_policy(session: Session, guest: str, policy: SegmentPolicy) -> None:
    session.send(POLICY, guest, pa.table({"release_membership": [policy.release_membership],
                                          "share_means": [policy.share_means]}))  # fmt: skip


def recv_policies(session: Session, hosts: Sequence[str]) -> dict[str, SegmentPolicy]:
    out = {}
    for h in hosts:
        t = session.recv(POLICY, h)
        out[h] = SegmentPolicy(bool(one(t, "release_membership")), bool(one(t, "share_means")))
    return out


def require_release(policies: dict[str, SegmentPolicy], what: str) -> None:
    """Refuse per-customer labels at the guest unless every host's policy allows them."""
    refusing = [h for h, p in policies.items() if not p.release_membership]
    if refusing:
        raise ConfigError(
            f"{what} releases each customer's segment at the guest, and the policy of {', '.join(refusing)} "
            "does not allow it ([segment] release_membership = true in that party's party.toml)"
        )


def assign_guest(
    session: Session,
    hosts: Sequence[str],
    labels: np.ndarray,
    lookup: np.ndarray,
    *,
    workers: WorkerPool | None = None,
) -> np.ndarray:
    """Scoring: the segment of every aligned new row from a segment model (every host's policy allowing it)."""
    policies = recv_policies(session, hosts)
    session.guard(lambda: require_release(policies, "assigning customers to segments"))
    keys = {h: session.receive_key(h) for h in hosts}
    return labels_guest(session, hosts, keys, labels, lookup, workers)


def assign_host(
    session: Session,
    guest: str,
    labels: np.ndarray,
    k_h: int,
    policy: SegmentPolicy,
    keypair: tuple[PublicKey, PrivateKey],
    hosts: Sequence[str],
    *,
    workers: WorkerPool | None = None,
) -> None:
    """Scoring, host side: our local cluster of every aligned new row, encrypted and selected by the guest."""
    send_policy(session, guest, policy)
    session.guard(lambda: require_release({session.party: policy}, "assigning customers to segments"))
    session.hand_out_key(keypair[0], [guest])
    labels_host(session, guest, labels, k_h, keypair, hosts, workers)
