"""The coordinated LR protocol alone (protocols/lr.py), over the in-process network with small fixed matrices.

No PSI, no preprocessing, no runtime: each role function runs in its own thread on its own session,
and the weights must equal the numpy reference trainer on the joined (quantized) matrix.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.lr.reference import train_reference
from vfl.crypto import generate_keypair, prepare_matrix
from vfl.errors import ConfigError, ProtocolError
from vfl.options import TrainOptions
from vfl.parties.simulation import run_parties
from vfl.protocols import lr
from vfl.protocols.catalog import ALL_PROTOCOLS, find
from vfl.protocols.session import Members, Session
from vfl.transport import LocalNetwork, decode_table


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


def _data(
    n: int = 96, seed: int = 3, host_columns: tuple[int, ...] = (3,)
) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    guest = np.hstack([np.ones((n, 1)), rng.normal(size=(n, 2))])
    hosts = [rng.normal(size=(n, k)) for k in host_columns]
    z = guest @ np.array([0.2, 1.0, -0.5]) + sum(h @ rng.normal(size=h.shape[1]) for h in hosts)
    y = (z + rng.normal(scale=0.5, size=n) > 0).astype(float)
    return [guest, *hosts], y


def _train(blocks, y, options, keypair):
    hosts = tuple(f"host{i}" for i in range(1, len(blocks)))
    members = Members("guest", hosts, "arbiter")
    plan = lr.LrPlan("job", "guest", hosts, "arbiter", options)
    network = LocalNetwork(list(members.parties))

    def session(party):
        return Session(network.channel(party), members, job_id="job")

    roles = {
        "guest": lambda: lr.run_guest(session("guest"), plan, blocks[0], y),
        "arbiter": lambda: lr.run_arbiter(session("arbiter"), plan, keypair=keypair),
    }
    for i, name in enumerate(hosts, start=1):
        roles[name] = lambda i=i, name=name: lr.run_host(session(name), plan, blocks[i])
    return run_parties(network, roles), network


@pytest.mark.parametrize(
    ("host_columns", "options"),
    [
        ((3,), dict(max_epochs=3, batch_size=40, tol=0.0)),
        ((2, 3), dict(max_epochs=2, batch_size=0, optimizer="momentum", learning_rate=0.1, tol=0.0)),
        ((3,), dict(max_epochs=3, batch_size=48, optimizer="sgd", penalty="l1", alpha=0.01, schedule="step",
                    decay=0.5, decay_epochs=1, tol=0.0)),
    ],
)  # fmt: skip
def test_protocol_equals_the_numpy_reference(keypair, host_columns, options):
    blocks, y = _data(host_columns=host_columns)
    o = TrainOptions(key_bits=1024, min_rows_per_column=2, **options)
    results, _ = _train(blocks, y, o, keypair)
    quantized = [prepare_matrix(b).dequantized for b in blocks]
    weights, losses = train_reference(
        quantized, y, o, ["guest", *[f"host{i}" for i in range(1, len(blocks))]]
    )
    np.testing.assert_allclose(results["guest"].weights, weights[0], rtol=1e-6, atol=1e-9)
    for i in range(1, len(blocks)):
        np.testing.assert_allclose(results[f"host{i}"].weights, weights[i], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(results["guest"].losses, losses, rtol=1e-6)
    assert results["arbiter"].losses == pytest.approx(losses, rel=1e-6)
    assert results["host1"].losses == []  # a host never learns the loss


def test_every_message_is_declared_and_hosts_see_only_ciphertexts(keypair):
    blocks, y = _data()
    _, network = _train(
        blocks, y, TrainOptions(key_bits=1024, max_epochs=1, batch_size=48, min_rows_per_column=2), keypair
    )
    for m in network.transcript:
        if m.tag.startswith("vfl/"):
            continue
        protocol, declared, _ = find(ALL_PROTOCOLS, m.tag)
        assert protocol.name in ("lr", "lr-stream", "session"), m.tag
        table = declared.check(decode_table(m.payload), peer=m.sender, tag=m.tag)
        if m.receiver.startswith("host") and declared.name in ("lr.d", "lr.randomizers"):
            assert all(str(t).startswith("fixed_size_binary") for t in table.schema.types)


def test_a_host_with_too_small_batches_stops_everyone_without_saying_why(keypair):
    blocks, y = _data(host_columns=(12,))
    o = TrainOptions(key_bits=1024, max_epochs=1, batch_size=40)  # 40 rows <= 4 x 12 columns
    with pytest.raises(ConfigError, match="batch_size 40 is too small for party 'host1' with 12 columns"):
        _train(blocks, y, o, keypair)


def test_parties_disagreeing_on_row_counts_are_refused(keypair):
    blocks, y = _data()
    o = TrainOptions(key_bits=1024, max_epochs=1, batch_size=0, min_rows_per_column=2)
    blocks[1] = blocks[1][:-5]  # the host has fewer aligned rows than the guest
    # The arbiter finds the mismatch; the guest learns only that the arbiter stopped, by reason code.
    with pytest.raises(ProtocolError, match=r"party 'arbiter' stopped the job \(protocol"):
        _train(blocks, y, o, keypair)


def test_the_arbiters_randomizer_stream_changes_no_result_and_each_party_gets_its_own(keypair):
    """Randomness changes ciphertexts, never a result; every data party gets a distinct stream per batch."""
    from gmpy2 import mpz

    from vfl.crypto import randomizers_from_arrow

    blocks, y = _data()
    options = dict(key_bits=1024, max_epochs=2, batch_size=48, min_rows_per_column=2, tol=0.0)
    streamed, network = _train(blocks, y, TrainOptions(**options, randomizer_stream="arbiter"), keypair)
    own, quiet = _train(blocks, y, TrainOptions(**options, randomizer_stream="none"), keypair)
    for party in ("guest", "host1"):
        np.testing.assert_array_equal(streamed[party].weights, own[party].weights)
    assert not [m for m in quiet.transcript if m.tag.endswith("/randomizers")]
    streams = [m for m in network.transcript if m.tag.endswith("/randomizers")]
    batches = 2 * 2  # two passes of two batches of 48 rows
    assert sorted({m.receiver for m in streams}) == ["guest", "host1"]
    assert len(streams) == 2 * batches and all(m.sender == "arbiter" for m in streams)
    seen: set[mpz] = set()
    for m in streams:
        values = randomizers_from_arrow(decode_table(m.payload), keypair[0])
        assert len(values) == 48 + lr.STREAM_SPARE
        assert not seen & set(values), "a randomizer was sent twice"
        seen |= set(values)
