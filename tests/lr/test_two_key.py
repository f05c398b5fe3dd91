"""Arbiter-free (two-key) logistic regression: the pure mask pieces, equivalence, privacy, bad input."""

from __future__ import annotations

import secrets

import numpy as np
import pandas as pd
import pytest

import vfl
from tests.lr import helpers
from tests.lr.reference import train_reference
from vfl.crypto import PackedCiphertexts, decrypt_packed, generate_keypair, ints_from_arrow, mask_and_pack
from vfl.crypto import encrypt as paillier_encrypt
from vfl.errors import ConfigError, DisagreementError, IntegrityError, ProtocolError
from vfl.options import TrainOptions
from vfl.protocols import lr_two_key
from vfl.protocols.lr_two_key import SLOTS, modulus_bits, pair_masks, sum_of_parts
from vfl.protocols.messages import learned_by
from vfl.transport import decode_table

PARTIES = ("guest", "host1", "host2")


@pytest.fixture(scope="module")
def keypairs():
    """One 1024-bit key pair per data party (each party's own; the test keeps them to look inside)."""
    return {p: generate_keypair(1024) for p in PARTIES}


@pytest.fixture(scope="module")
def breast(fate):
    guest = pd.read_csv(fate / "breast_hetero_guest.csv")
    host = pd.read_csv(fate / "breast_hetero_host.csv")
    half = host.columns[1:11]
    return guest, host, host[["id", *half]], host.drop(columns=list(half))


# --- the pure pieces -----------------------------------------------------------------------------


def test_pairwise_masks_cancel_over_the_decryptors_and_each_share_is_uniform():
    bits = modulus_bits(1024)
    among = ("guest", "host1", "host2", "host3")
    seeds: dict[tuple[str, str], bytes] = {}
    for i, a in enumerate(among):
        for b in among[i + 1 :]:
            seeds[a, b] = seeds[b, a] = secrets.token_bytes(32)
    shares = []
    for me in among:
        mine = {peer: seeds[me, peer] for peer in among if peer != me}
        shares.append(pair_masks(me, among, mine, "0/1/2/g/host4", 7, bits))
    total = [sum(column) % (1 << bits) for column in zip(*shares, strict=True)]
    assert total == [0] * 7
    for share in shares:  # uniform mod 2^T: no share is small
        assert all(v.bit_length() > bits - 40 for v in share)
    # A single decryptor adds nothing (a party with one decryptor learns its own result).
    assert pair_masks("guest", ("guest",), {}, "ctx", 3, bits) == [0, 0, 0]


def test_sum_of_parts_equals_the_plain_sum_and_refuses_an_altered_reply(keypairs):
    """Each part masked and decrypted by its owner, plus cancelling masks: the sum is the numpy sum."""
    bits = modulus_bits(1024)
    rng = np.random.default_rng(3)
    parts = rng.normal(scale=20.0, size=(3, 6))
    owners = PARTIES
    seeds = {(a, b): secrets.token_bytes(32) for a in owners for b in owners if a < b}
    replies, masks = [], []
    for owner, part in zip(owners, parts, strict=True):
        public, private = keypairs[owner]
        packed, mask = mask_and_pack(paillier_encrypt(public, part), bound=100.0, mask_bits=80)
        slots = decrypt_packed(private, packed)
        mine = {p: seeds[min(owner, p), max(owner, p)] for p in owners if p != owner}
        noise = pair_masks(owner, owners, mine, "ctx", len(slots), bits)
        replies.append([(s + r) % (1 << bits) for s, r in zip(slots, noise, strict=True)])
        masks.append(mask)
    total = np.ldexp(np.array(sum_of_parts(replies, masks, bits), dtype=float), 4 * masks[0].exponent)
    np.testing.assert_allclose(total, parts.sum(axis=0), rtol=0, atol=1e-8)
    replies[1][2] = (replies[1][2] + (1 << (bits - 2))) % (1 << bits)
    with pytest.raises(IntegrityError, match="beyond its bound"):
        sum_of_parts(replies, masks, bits)


# --- equivalence ---------------------------------------------------------------------------------

OPTION_SETS = [
    dict(max_epochs=3, batch_size=128, tol=0.0, penalty="l2", alpha=0.01),
    helpers.SGD_L1_STEP,
    helpers.MOMENTUM_L2_FULLBATCH,
    helpers.FAST_TWO_PASSES,
]


@pytest.mark.parametrize("n_hosts", [1, 2])
@pytest.mark.parametrize(
    "options", OPTION_SETS, ids=["adam-l2", "sgd-l1-step", "momentum-fullbatch", "fast-profile"]
)
def test_arbiter_free_model_equals_the_reference_and_the_coordinated_model(
    breast, keypairs, options, n_hosts
):
    guest, host, host1, host2 = breast
    hosts = [host] if n_hosts == 1 else [host1, host2]
    run = dict(id="id", label="y", key_bits=1024, workers=1, **options)
    result = vfl.simulate(guest, hosts, topology="arbiter-free", keypairs=keypairs, **run)
    blocks, y, names, maps = helpers.training_blocks(result, [guest, *hosts])
    expected, losses = train_reference(blocks, y, TrainOptions(key_bits=1024, **options), names)
    for name, w, whitening in zip(names, expected, maps, strict=True):
        np.testing.assert_allclose(
            result.shards[name].weight_vector, whitening.to_original(w), rtol=1e-6, atol=1e-9
        )
    np.testing.assert_allclose(result.losses, losses, rtol=1e-4)
    assert result.epochs == options["max_epochs"] and "arbiter" not in result.ledgers
    coordinated = vfl.simulate(guest, hosts, keypair=keypairs["guest"], **run)
    for name in names:
        np.testing.assert_allclose(
            result.shards[name].weight_vector, coordinated.shards[name].weight_vector, rtol=1e-6, atol=1e-9
        )


# --- privacy -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_hosts(breast, keypairs):
    guest, _, host1, host2 = breast
    guest = guest.assign(id="customer-" + guest["id"].astype(str) + "-x7")
    host1 = host1.assign(id="customer-" + host1["id"].astype(str) + "-x7")
    host2 = host2.assign(id="customer-" + host2["id"].astype(str) + "-x7")
    result = vfl.simulate(
        guest, [host1, host2], id="id", label="y", key_bits=1024, max_epochs=2, batch_size=128, tol=0.0,
        topology="arbiter-free", keypairs=keypairs, workers=1,
    )  # fmt: skip
    return result, (guest, host1, host2)


def test_every_plaintext_a_party_receives_is_its_own_result_or_uniformly_masked(two_hosts, keypairs):
    result, _ = two_hosts
    bits = modulus_bits(1024)
    transcript = result.network.transcript
    replies = [m for m in transcript if helpers.declared(m.tag) in ("lr2.unmasked", "lr2.loss-part")]
    assert {m.receiver for m in replies} == set(PARTIES)
    for m in replies:
        # With two hosts every party's parts are decrypted by two parties: each reply alone is uniform
        # mod 2^T, so no party ever holds one other party's gradient part (or one host's loss term).
        values = ints_from_arrow(decode_table(m.payload), kind=SLOTS)
        assert all(v.bit_length() > bits - 40 for v in values), f"{m.tag} from {m.sender} looks unmasked"
    masked = [m for m in transcript if helpers.declared(m.tag) in ("lr2.masked", "lr2.loss-masked")]
    assert {m.receiver for m in masked} == set(PARTIES)
    for m in masked:
        # What a key owner decrypts: every slot is value + bound + a uniform mask 80 bits wider than the bound.
        public, private = keypairs[m.receiver]
        packed = PackedCiphertexts.from_arrow(decode_table(m.payload), public)
        slots = decrypt_packed(private, packed)
        assert all(s.bit_length() > packed.slot_bits - 1 - 30 for s in slots), m.tag
        assert packed.slot_bits - 1 >= 80 + 2, m.tag


def test_no_raw_feature_label_weight_or_id_crosses_and_each_role_receives_exactly_this(two_hosts):
    result, frames = two_hosts
    messages = helpers.decoded(result.network.transcript)
    secret_values = set()
    for frame in frames:
        values = frame.drop(columns=["id"]).to_numpy(float).ravel()
        secret_values |= {v for v in values if abs(v) > 1e-3 and v not in (0.0, 1.0, -1.0)}
    for shard in result.shards.values():
        secret_values |= {w for w in shard.weights if abs(w) > 1e-9}
    ids = list(frames[0]["id"])[:50]
    labels = frames[0]["y"].to_numpy()
    for message, table in messages:
        assert not secret_values & set(helpers.float_values(table)), f"a raw value crossed in {message.tag}"
        assert not any(raw.encode() in message.payload for raw in ids), f"raw id crossed in {message.tag}"
        for column in table.columns:
            if len(column) == len(labels) and column.type in ("int64", "int32", "bool", "double"):
                assert not np.array_equal(column.to_numpy(), labels), f"labels crossed in {message.tag}"
        if helpers.declared(message.tag) == "lr2.stop":
            assert table.column_names == ["stop"], "a host must not learn the loss"
    received = {
        party: {helpers.declared(m.tag) for m, _ in messages if m.receiver == party} for party in PARTIES
    }
    training = {
        "session.public-key",
        "lr2.seed",
        "lr2.masked",
        "lr2.unmasked",
        "shards.digest",
        "session.done",
    }
    assert received["guest"] == {
        "session.agree",
        "psi.hello-ack",
        "psi.host-points",
        "psi.double",
        "lr2.setup",
        "lr2.u",
        "lr2.loss-part",
        "predict.partial",
        *(training - {"lr2.seed"}),
    }  # fmt: skip  (the guest is first in every pair: it draws the seeds it shares)
    for host in ("host1", "host2"):
        assert received[host] == {
            "session.agree", "psi.hello", "psi.guest-points", "psi.result", "split.held-out", "lr2.a", "lr2.u",
            "lr2.loss-masked", "lr2.stop", *training, *(["predict.pair-seed"] if host == "host2" else []),
        }, host  # fmt: skip
    for party in PARTIES:
        ledger = result.ledgers[party]
        assert "lr-two-key" in ledger.protocols and "lr" not in ledger.protocols
        by_name = {p.name: p for p in _protocols()}
        got = {m["message"] for m in ledger.messages if m["direction"] == "received"}
        learns, never = learned_by([by_name[name] for name in ledger.protocols], ledger.role, got)
        assert ledger.learns == learns and ledger.never_learns == never
    assert "the loss" in result.ledgers["host1"].never_learns
    assert any("single host's gradient part" in item for item in result.ledgers["guest"].never_learns)


def _protocols():
    from vfl.protocols.catalog import ALL_PROTOCOLS

    return ALL_PROTOCOLS


# --- bad input -----------------------------------------------------------------------------------


def test_a_federation_with_an_arbiter_asked_for_arbiter_free_leaves_the_arbiter_idle(
    breast, keypairs, tmp_path
):
    from vfl.cli.demo import setup_demo
    from vfl.config import JobConfig
    from vfl.parties.runner import run_party

    workspaces, _ = setup_demo(tmp_path, key_bits=1024, max_epochs=1)
    job = tmp_path / "af.toml"
    job.write_text(JobConfig(id="af", kind="train", train={"topology": "arbiter-free"}).to_toml())
    outcome = run_party(workspaces["arbiter"], job)
    assert "takes no part" in outcome.summary["note"] and "arbiter-free" in outcome.summary["note"]
    assert not (workspaces["arbiter"] / "out" / "af").exists()
    # In one process: the arbiter is not contacted at all.
    guest, host, _, _ = breast
    result = vfl.simulate(
        guest, [host], id="id", label="y", key_bits=1024, max_epochs=1, topology="arbiter-free",
        keypairs=keypairs, workers=1,
    )  # fmt: skip
    assert all("arbiter" not in (m.sender, m.receiver) for m in result.network.transcript)


def test_coordinated_training_without_an_arbiter_is_refused_with_the_fix():
    from vfl.parties.common import Job

    with pytest.raises(ConfigError, match='topology = "coordinated" needs an arbiter.*"arbiter-free"'):
        Job("j", "guest", ("host",), None, TrainOptions(topology="coordinated"))
    assert Job("j", "guest", ("host",), None).topology == "arbiter-free"
    assert Job("j", "guest", ("host",), "arbiter").topology == "coordinated"
    with pytest.raises(ConfigError, match="job option topology must be one of"):
        TrainOptions.from_dict({"topology": "star"})


def test_a_peer_key_of_another_size_is_refused_naming_the_peer(keypairs):
    import threading

    from vfl.protocols.session import Members, Session
    from vfl.transport.local import LocalNetwork

    network = LocalNetwork(["guest", "host1"])
    members = Members("guest", ("host1",))
    plan = lr_two_key.TwoKeyPlan("j", "guest", ("host1",), TrainOptions(key_bits=1024))
    guest = Session(network.channel("guest"), members, job_id="j")
    host = Session(network.channel("host1"), members, job_id="j")
    party = lr_two_key.TwoKeyParty(guest, plan, np.ones((200, 2)), intercept=True, keypair=keypairs["guest"])
    big, _ = generate_keypair(2048)
    threading.Thread(target=lambda: host.hand_out_key(big, ["guest"], generation=0), daemon=True).start()
    with pytest.raises(
        ProtocolError, match="party 'host1' sent a 2048-bit public key, but the job uses key_bits = 1024"
    ):
        party.new_generation(0)
    with pytest.raises(
        ConfigError, match="the key pair given to party 'host1' has 1024 bits.*key_bits = 2048"
    ):
        lr_two_key.TwoKeyParty(
            host, lr_two_key.TwoKeyPlan("j", "guest", ("host1",), TrainOptions()), np.ones((200, 2)),
            intercept=False, keypair=keypairs["host1"],
        )  # fmt: skip


def test_a_host_on_an_older_protocol_version_is_refused_by_the_agreement(breast):
    """The agreement covers the protocol version: a host whose vfl predates arbiter-free training
    (no topology option, no two-key protocol) makes every party refuse, naming the difference."""
    from vfl.parties.common import Job
    from vfl.parties.jobs import RoleContext, run_role
    from vfl.parties.simulation import run_parties
    from vfl.transport.local import LocalNetwork

    class OldJob(Job):
        def settings(self):
            shared = super().settings()
            shared.pop("train.topology")
            shared["train.protocol"] = "lr-two-key/0"
            return shared

    guest, host, _, _ = breast
    options = TrainOptions(key_bits=1024, max_epochs=1, topology="arbiter-free")
    new = Job("v", "guest", ("host1",), None, options)
    old = OldJob("v", "guest", ("host1",), None, options)
    network = LocalNetwork(["guest", "host1"])
    roles = {}
    for party, job, frame in (("guest", new, guest), ("host1", old, host)):
        ctx = RoleContext(
            job.session(network.channel(party)), job, frame, label="y" if party == "guest" else None
        )
        roles[party] = lambda ctx=ctx: run_role("train", ctx)
    with pytest.raises(DisagreementError, match=r"train.protocol \(lr-two-key/1 here, lr-two-key/0 there\)"):
        run_parties(network, roles)


@pytest.mark.slow
def test_arbiter_free_rounds_check_the_loss_twice_per_pass_and_equal_the_reference(keypairs):
    """With 10,000 training rows a pass is two rounds: the guest's loss per round, the round averages
    and the schedule on passes are the coordinated topology's, so the model equals the reference."""
    rng = np.random.default_rng(12)
    n = 12500  # 10,000 training rows after the 20 % held out
    x = rng.standard_normal((n, 6)) @ (np.eye(6) + 0.4)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ rng.normal(size=6) * 0.4)))).astype(int)
    ids = np.arange(n)
    guest = pd.DataFrame({"id": ids, "y": y, **{f"g{i}": x[:, i] for i in range(3)}})
    host = pd.DataFrame({"id": ids, **{f"h{i}": x[:, 3 + i] for i in range(3)}})
    options = {**helpers.FAST_TWO_PASSES, "max_epochs": 1, "batch_size": 2500}
    result = vfl.simulate(
        guest, [host], id="id", label="y", key_bits=1024, workers=1, topology="arbiter-free",
        keypairs=keypairs, **options,
    )  # fmt: skip
    blocks, labels, names, maps = helpers.training_blocks(result, [guest, host])
    expected, losses = train_reference(blocks, labels, TrainOptions(key_bits=1024, **options), names)
    assert result.epochs == 2 and len(result.losses) == 2
    for name, w, whitening in zip(names, expected, maps, strict=True):
        np.testing.assert_allclose(
            result.shards[name].weight_vector, whitening.to_original(w), rtol=1e-6, atol=1e-9
        )
    np.testing.assert_allclose(result.losses, losses, rtol=1e-4)
