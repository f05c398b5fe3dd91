"""Multi-class LR without an arbiter (protocols/lr_two_key_multiclass.py): equivalence with the one-vs-rest
reference and the coordinated model, what crosses (every masked slot uniform, every per-row value under its
sender's key), the ledgers, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import vfl
from tests.lr import helpers
from tests.models.test_federated import _blocks, _four_classes
from tests.test_declared_messages import assert_all_declared
from vfl.crypto import EncryptedVector, PackedCiphertexts, decrypt_packed, generate_keypair, ints_from_arrow
from vfl.errors import ConfigError, DataError
from vfl.models.reference import train_ovr_reference
from vfl.options import TrainOptions
from vfl.parties.common import Job
from vfl.protocols.catalog import ALL_PROTOCOLS
from vfl.protocols.lr_two_key import SLOTS, modulus_bits
from vfl.protocols.lr_two_key_multiclass import two_key_groups
from vfl.protocols.messages import learned_by
from vfl.transport import decode_table

PARTIES = ("guest", "host1", "host2")
OPTIONS = dict(model="multiclass-lr", max_epochs=2, batch_size=100, learning_rate=0.1, tol=0.0)


@pytest.fixture(scope="module")
def keypairs():
    return {p: generate_keypair(1024) for p in PARTIES}


def _train(guest, hosts, keypairs, **extra):
    run = {"id": "id", "label": "y", "key_bits": 1024, "workers": 1, **OPTIONS, **extra}
    return vfl.simulate(guest, hosts, topology="arbiter-free", keypairs=keypairs, **run)


def _equals_the_reference(result, guest, hosts, k):
    blocks, y, _, names = _blocks(result, [guest, *hosts], "id", "y")
    weights, losses = train_ovr_reference(blocks, y.astype(int), k, TrainOptions(**OPTIONS), names)
    for name, w in zip(names, weights, strict=True):
        np.testing.assert_allclose(np.asarray(result.shards[name].weights), w, atol=1e-6)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
    assert "arbiter" not in result.ledgers


def test_one_host_four_classes_in_two_ciphertexts_equal_the_reference_and_the_coordinated_model(keypairs):
    """K = 4 with 80-bit masks: 158-bit slots, 6 per 1024-bit plaintext, 3 usable for the loss, so two
    ciphertexts of 2 classes per row; the model equals the reference and the coordinated model."""
    groups = two_key_groups(TrainOptions(key_bits=1024, **OPTIONS), 240, 4)
    assert (groups.groups, groups.per, groups.layout.slot_bits) == (2, 2, 158)
    guest, host = _four_classes(300)
    result = _train(guest, [host], keypairs)
    _equals_the_reference(result, guest, [host], 4)
    u = [t for t in result.network.transcript if helpers.declared(t.tag) == "lr2.u"]
    a = [t for t in result.network.transcript if helpers.declared(t.tag) == "lr2.a"]
    assert decode_table(u[0].payload).num_rows == decode_table(a[0].payload).num_rows == 2 * 100
    coordinated = vfl.simulate(
        guest, host, id="id", label="y", key_bits=1024, workers=1, keypair=keypairs["guest"], **OPTIONS
    )
    for name in ("guest", "host1"):
        np.testing.assert_allclose(
            np.asarray(result.shards[name].weights), np.asarray(coordinated.shards[name].weights), atol=1e-6
        )
    np.testing.assert_allclose(result.losses, coordinated.losses, rtol=1e-6)


@pytest.fixture(scope="module")
def two_hosts(keypairs):
    guest, host = _four_classes(300)
    guest = guest.assign(y=guest["y"] % 3)  # three classes: one ciphertext of 3 slots per row
    first, second = host[["id", "h0", "h1", "h2"]], host[["id", "h3", "h4", "h5"]]
    return _train(guest, [first, second], keypairs), guest, [first, second]


def test_two_hosts_equal_the_reference(two_hosts):
    result, guest, hosts = two_hosts
    _equals_the_reference(result, guest, hosts, 3)
    assert {"accuracy", "f1_macro", "auc_ovr"} <= set(result.metrics)


def test_every_masked_slot_is_uniform_and_every_per_row_value_is_under_its_senders_key(two_hosts, keypairs):
    result, guest, hosts = two_hosts
    bits, transcript = modulus_bits(1024), result.network.transcript
    seen = assert_all_declared(result.network, Job("t", "guest", ("host1", "host2"), None))
    assert {"lr2.classes", "lr2.a", "lr2.u", "lr2.masked", "lr2.unmasked", "lr2.loss-masked"} <= seen
    for m in transcript:
        name = helpers.declared(m.tag)
        table = decode_table(m.payload)
        if name in ("lr2.a", "lr2.u"):  # per-row packed values: encrypted under the sender's own key only
            EncryptedVector.from_arrow(table, keypairs[m.sender][0])
            assert m.receiver != m.sender
        elif name in ("lr2.unmasked", "lr2.loss-part"):
            # Two decryptors for every party's parts: each reply alone is uniform mod 2^T (no single
            # gradient part of another party, no single host's loss term).
            values = ints_from_arrow(table, kind=SLOTS)
            assert all(v.bit_length() > bits - 40 for v in values), f"{m.tag} from {m.sender} looks unmasked"
        elif name in ("lr2.masked", "lr2.loss-masked"):
            # What the key owner decrypts: every slot, the loss's readable one too, carries a uniform mask
            # 80 bits wider than its value; the slots are wide enough that none carries into the next.
            packed = PackedCiphertexts.from_arrow(table, keypairs[m.receiver][0])
            slots = decrypt_packed(keypairs[m.receiver][1], packed)
            assert packed.slot_bits - 2 >= 80 + 70, m.tag
            assert all(s.bit_length() > packed.slot_bits - 2 - 30 for s in slots), m.tag
    labels = guest["y"].to_numpy()
    for m, table in helpers.decoded(transcript):
        for column in table.columns:
            if len(column) == len(labels) and column.type in ("int64", "int32", "double"):
                assert not np.array_equal(column.to_numpy(), labels), f"labels crossed in {m.tag}"


def test_the_ledgers_follow_the_message_tables(two_hosts):
    result, _, _ = two_hosts
    by_name = {p.name: p for p in ALL_PROTOCOLS}
    for party in PARTIES:
        ledger = result.ledgers[party]
        assert "lr-two-key" in ledger.protocols and "lr" not in ledger.protocols
        got = {m["message"] for m in ledger.messages if m["direction"] == "received"}
        learns, never = learned_by([by_name[name] for name in ledger.protocols], ledger.role, got)
        assert ledger.learns == learns and ledger.never_learns == never
    for host in ("host1", "host2"):
        assert "the number of classes of a multi-class model" in result.ledgers[host].learns
        assert {"labels", "scores", "the loss"} <= set(result.ledgers[host].never_learns)


def test_bad_input_is_refused_before_any_peer_is_contacted(keypairs):
    guest, host = _four_classes(300)
    many = guest.assign(y=np.arange(len(guest)) % 17)
    with pytest.raises(DataError, match="supports at most 16"):
        _train(many, [host], keypairs)
    with pytest.raises(DataError, match="one class only"):
        _train(guest.assign(y=1), [host], keypairs)
    with pytest.raises(ConfigError, match="multiclass-lr trains 2 to 16 classes"):
        two_key_groups(TrainOptions(**OPTIONS), 240, 17)
    with pytest.raises(ConfigError, match="arbiter-free training fits model = 'binary-lr', 'linear', 'multi"):
        _train(guest, [host], keypairs, model="poisson")
