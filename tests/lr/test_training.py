"""Coordinated logistic regression end to end over the in-process network: math, accuracy, privacy, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import vfl
from tests.lr.helpers import (
    MOMENTUM_L2_FULLBATCH,
    SGD_L1_STEP,
    declared,
    decoded,
    float_values,
    training_blocks,
)
from tests.lr.reference import train_reference
from vfl.crypto import generate_keypair
from vfl.errors import ConfigError, DataError, VflError
from vfl.optim import max_rounds
from vfl.options import TrainOptions


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


@pytest.fixture(scope="module")
def breast(fate):
    return pd.read_csv(fate / "breast_hetero_guest.csv"), pd.read_csv(fate / "breast_hetero_host.csv")


@pytest.fixture(scope="module")
def credit(fate):
    if not (fate / "default_credit_hetero_guest.csv").exists():
        pytest.skip("default_credit is not bundled; it needs ../shared/data/fate beside the repository")
    return pd.read_csv(fate / "default_credit_hetero_guest.csv"), pd.read_csv(
        fate / "default_credit_hetero_host.csv"
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(max_epochs=3, batch_size=128, tol=0.0),
        SGD_L1_STEP,
        MOMENTUM_L2_FULLBATCH,
        dict(max_epochs=2, tol=0.0, batch_size=128),  # the defaults: round averaging, two loss checks
        dict(max_epochs=2, batch_size=128, tol=0.0, precondition="none", loss_checks=1, averaging="none"),
    ],
    ids=[
        "adam-minibatch",
        "sgd-l1-step-random-init",
        "momentum-l2-fullbatch-invtime",
        "defaults",
        "unpreconditioned-one-check",
    ],
)
def test_federated_weights_equal_centralized_taylor_training(breast, keypair, options):
    guest, host = breast
    result = vfl.simulate(guest, [host], id="id", label="y", key_bits=1024, keypair=keypair, **options)
    blocks, y, names, maps = training_blocks(result, [guest, host])
    expected, losses = train_reference(blocks, y, TrainOptions(key_bits=1024, **options), names)
    for name, w, whitening in zip(names, expected, maps, strict=True):
        # The shard holds the weights mapped back to the party's own columns.
        np.testing.assert_allclose(
            result.shards[name].weight_vector, whitening.to_original(w), rtol=1e-6, atol=1e-9
        )
    # The arbiter's loss comes from one decryption of the guest's encrypted Taylor terms.
    np.testing.assert_allclose(result.losses, losses, rtol=1e-4)
    assert result.epochs == max_rounds(len(y), TrainOptions(**options))


def _sklearn_auc(frames, result, id_column="id", label="y"):
    order = result.scores[id_column]
    held = result.scores["held_out"].to_numpy()
    joined = frames[0].set_index(id_column).loc[order]
    for i, frame in enumerate(frames[1:], start=1):
        joined = joined.join(frame.set_index(id_column).loc[order].add_prefix(f"h{i}_"))
    y = joined[label].to_numpy()
    x = joined.drop(columns=[label]).to_numpy(float)
    mean, std = x[~held].mean(0), x[~held].std(0)
    x = (x - mean) / std
    model = LogisticRegression(max_iter=2000).fit(x[~held], y[~held])
    return roc_auc_score(y[held], model.decision_function(x[held]))


def test_defaults_match_sklearn_auc_on_breast(breast, keypair):
    guest, host = breast
    result = vfl.simulate(guest, [host], id="id", label="y", key_bits=1024, keypair=keypair)
    assert set(result.metrics) >= {"auc", "ks", "accuracy", "log_loss", "precision", "recall", "f1"}
    assert result.metrics["auc"] >= _sklearn_auc([guest, host], result) - 0.005
    assert len(result.scores) == len(guest) and result.scores["held_out"].mean() == pytest.approx(
        0.2, abs=0.01
    )
    assert result.losses[-1] < result.losses[0]
    assert len(result.lift) == 10


@pytest.mark.slow
def test_defaults_match_sklearn_auc_on_default_credit(credit, keypair):
    guest, host = credit
    result = vfl.simulate(guest, [host], id="id", label="y", key_bits=1024, keypair=keypair)
    assert result.metrics["auc"] >= _sklearn_auc([guest, host], result) - 0.005


@pytest.mark.slow
def test_two_hosts_equal_one_host_holding_both(credit, keypair):
    guest, host = credit
    guest, host = guest.iloc[:6000], host.iloc[:6000]
    cols = [c for c in host.columns if c != "id"]
    h1, h2 = host[["id", *cols[:5]]], host[["id", *cols[5:]]]
    # Without whitening: each party whitens its own block, so a split host preconditions differently.
    options = dict(
        max_epochs=2, batch_size=1024, tol=0.0, key_bits=1024, keypair=keypair, precondition="none"
    )
    two = vfl.simulate(guest, [h1, h2], id="id", label="y", **options)
    one = vfl.simulate(guest, [host], id="id", label="y", **options)
    pd.testing.assert_series_equal(two.scores["id"], one.scores["id"])
    np.testing.assert_allclose(
        two.shards["guest"].weight_vector, one.shards["guest"].weight_vector, rtol=1e-6
    )
    both = np.concatenate([two.shards["host1"].weight_vector, two.shards["host2"].weight_vector])
    np.testing.assert_allclose(both, one.shards["host1"].weight_vector, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.scores["score"], one.scores["score"], rtol=1e-6)


# --- privacy -------------------------------------------------------------------------------------


def test_transcript_carries_no_feature_label_weight_or_id(breast, keypair):
    guest, host = breast
    guest = guest.assign(id="customer-" + guest["id"].astype(str) + "-x7")
    host = host.assign(id="customer-" + host["id"].astype(str) + "-x7")
    result = vfl.simulate(guest, [host], id="id", label="y", key_bits=1024, keypair=keypair, max_epochs=2)
    messages = decoded(result.network.transcript)
    assert messages

    secrets = set()
    for frame in (guest, host):
        values = frame.drop(columns=["id"]).to_numpy(float).ravel()
        secrets |= {v for v in values if abs(v) > 1e-3 and v not in (0.0, 1.0, -1.0)}
    for shard in result.shards.values():
        secrets |= {w for w in shard.weights if abs(w) > 1e-9}
    ids = set(guest["id"])
    labels = guest["y"].to_numpy()
    for message, table in messages:
        assert not secrets & set(float_values(table)), f"a raw value crossed in {message.tag}"
        for raw in list(ids)[:50]:
            assert raw.encode() not in message.payload, f"raw id crossed in {message.tag}"
        for column in table.columns:
            if len(column) == len(labels) and column.type in ("int64", "int32", "bool", "double"):
                assert not np.array_equal(column.to_numpy(), labels), f"labels crossed in {message.tag}"

    # Every message is declared (tests/test_declared_messages.py checks fields and roles); here: which
    # declared messages each role receives, so that a new message to the arbiter or a host fails.
    received = {
        party: {declared(m.tag) for m, _ in messages if m.receiver == party} for party in result.ledgers
    }
    assert received["arbiter"] == {"session.agree", "lr.setup", "lr.masked", "lr.loss", "session.done"}
    assert received["host1"] == {
        "session.agree", "session.public-key", "psi.hello", "psi.guest-points", "psi.result",
        "split.held-out", "lr.d", "lr.unmasked", "lr.stop", "shards.digest", "session.done",
    }  # fmt: skip
    for message, table in messages:
        if message.receiver == "host1" and declared(message.tag) == "lr.stop":
            assert table.column_names == ["stop"], "a host must not learn the loss"
        if message.receiver in ("host1", "arbiter") and declared(message.tag) in (
            "lr.d",
            "lr.masked",
            "lr.loss",
        ):
            assert all(str(t).startswith("fixed_size_binary") for t in table.schema.types), message.tag


def test_arbiter_sees_only_masked_gradients(breast, keypair):
    """Decrypting what the arbiter decrypts gives values unrelated to the gradients (40+ bits of mask)."""
    from vfl.crypto import PackedCiphertexts, decrypt_packed

    guest, host = breast
    result = vfl.simulate(
        guest, [host], id="id", label="y", key_bits=1024, keypair=keypair, max_epochs=1, batch_size=None
    )
    public, private = keypair
    masked = [m for m in result.network.transcript if m.receiver == "arbiter" and m.tag.endswith("/masked")]
    assert len(masked) == 2  # one full batch, two data parties
    from vfl.transport import decode_table

    for message in masked:
        slots = decrypt_packed(private, PackedCiphertexts.from_arrow(decode_table(message.payload), public))
        # Real gradient slots are at most ~2**70 here; masked slots are uniform over a range 40 bits wider.
        assert min(slots) > 2**80, "a slot looks unmasked"


# --- bad input -----------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(breast, keypair):
    guest, host = breast
    run = dict(id="id", key_bits=1024, keypair=keypair, max_epochs=1)
    with pytest.raises(DataError, match="has no column 'label'"):
        vfl.simulate(guest, [host], label="label", **run)
    with pytest.raises(DataError, match="label column 'x0' must have exactly two distinct values"):
        vfl.simulate(guest.drop(columns=["y"]), [host], label="x0", **run)
    text = host.assign(city=[f"city-{i}" for i in range(len(host))])
    with pytest.raises(DataError, match="text column 'city' has 569 distinct values \\(at most 20\\)"):
        vfl.simulate(guest, [text], label="y", **run)
    with pytest.raises(DataError, match="column 'x3' has no values"):
        vfl.simulate(guest, [host.assign(x3=np.nan)], label="y", **run)
    with pytest.raises(DataError, match="column 'x5' is constant"):
        vfl.simulate(guest, [host.assign(x5=7.0)], label="y", **run)
    with pytest.raises(
        ConfigError, match="batch_size 60 is too small for party .host1. with 20 columns.*above 80"
    ):
        vfl.simulate(guest, [host], label="y", batch_size=60, **run)
    disjoint = host.assign(id=host["id"] + 10_000_000)
    with pytest.raises(DataError, match="the parties share no ids"):
        vfl.simulate(guest, [disjoint], label="y", **run)
    with pytest.raises(ConfigError, match="unknown job option"):
        vfl.simulate(guest, [host], label="y", epochs=3, id="id")
    with pytest.raises(VflError):
        vfl.simulate(guest.assign(x1="abc"), [host], label="y", **run)


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["coordinated", "arbiter-free"])
def test_auto_on_large_data_whitens_and_equals_the_reference(credit, keypair, topology):
    """The defaults on 10,000+ training rows: each party whitens, SGD 2.0 (``LARGE_DATA``), same model as numpy."""
    guest, host = credit
    guest, host = guest.iloc[:12600], host.iloc[:12600]
    keys = (
        {"keypair": keypair}
        if topology == "coordinated"
        else {"keypairs": {"guest": keypair, "host1": generate_keypair(1024)}}
    )
    options = dict(max_epochs=1, tol=0.0)
    result = vfl.simulate(
        guest, [host], id="id", label="y", key_bits=1024, topology=topology, **keys, **options
    )
    blocks, y, names, maps = training_blocks(result, [guest, host])
    resolved = TrainOptions(key_bits=1024, **options).at_rows(len(y))
    assert len(y) >= 10000 and resolved.precondition == "whiten" and resolved.optimizer == "sgd"
    assert not np.allclose(maps[1].matrix, np.eye(len(maps[1].matrix)))  # the host whitened its columns
    expected, losses = train_reference(blocks, y, TrainOptions(key_bits=1024, **options), names)
    for name, w, whitening in zip(names, expected, maps, strict=True):
        np.testing.assert_allclose(
            result.shards[name].weight_vector, whitening.to_original(w), rtol=1e-6, atol=1e-9
        )
    np.testing.assert_allclose(result.losses, losses, rtol=1e-4)
    assert result.epochs == 2  # two loss checks per pass
