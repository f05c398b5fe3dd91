"""Per-customer segment labels with 1..N hosts (``protocols/segment_labels.py``): the chain of masked
selections gives the guest every row's final segment and nobody anything else.

The chain against the lookup on the true local clusters (1, 2 and 3 hosts, random clusters), a whole
segment job with membership release and 2 hosts (its transcript), and ``vfl predict`` with a segment
model of 3 parties.
"""

from __future__ import annotations

import numpy as np
import pytest

from vfl.analytics.crosstab import encrypt_rows
from vfl.crypto import generate_keypair, ints_from_arrow
from vfl.errors import ConfigError
from vfl.parties.common import Job
from vfl.parties.segment import simulate_segment
from vfl.parties.simulation import run_parties
from vfl.protocols.catalog import ALL_PROTOCOLS, find
from vfl.protocols.messages import FIXED
from vfl.protocols.segment_labels import labels_guest, labels_host, select
from vfl.segmentation.options import SegmentPolicy
from vfl.segmentation.synthetic import vertical_blobs
from vfl.transport import decode_table
from vfl.transport.local import LocalNetwork

from .helpers import predict_segments
from .test_segment_job import RELEASE, _assert_no_raw_values, assignment, frames_of


@pytest.fixture(scope="module")
def keypairs():
    return [generate_keypair(1024) for _ in range(3)]


def test_select_picks_each_rows_weights_by_its_encrypted_cluster(keypairs):
    pk, sk = keypairs[0]
    rng = np.random.default_rng(0)
    n, k, m = 7, 4, 3
    clusters = rng.integers(0, k, n)
    onehot = encrypt_rows(pk, [int(b == c) for c in clusters for b in range(k)])
    weights = rng.integers(0, 2**45, (n, k, m))
    weights[0] = 0  # a row whose weights are all zero selects an encryption of 0
    got = np.array([int(v) for v in sk.decrypt_raw(select(onehot, weights, pk.n_square))]).reshape(n, m)
    np.testing.assert_array_equal(got, weights[np.arange(n), clusters])


def _chain(keypairs, n_hosts: int, n: int = 120, seed: int = 1, ks=None, lookup=None, clusters=None):
    """Run the chain alone on (random) local clusters; return the guest's labels, the truth, the transcript."""
    rng = np.random.default_rng(seed)
    hosts = tuple(f"host{i + 1}" for i in range(n_hosts))
    ks = ks or [5, *([3, 4, 2][:n_hosts])]
    clusters = [rng.integers(0, k, n) for k in ks] if clusters is None else clusters
    lookup = rng.integers(-1, 6, ks) if lookup is None else lookup  # -1: a withheld cell
    job = Job("chain", "guest", hosts, kind="segment")
    network = LocalNetwork(list(job.parties))

    def guest():
        s = job.session(network.channel("guest"))
        keys = {h: s.receive_key(h) for h in hosts}
        return labels_guest(s, hosts, keys, clusters[0], lookup)

    def host(i: int):
        s = job.session(network.channel(hosts[i]))
        s.hand_out_key(keypairs[i][0], ["guest"])
        labels_host(s, "guest", clusters[i + 1], ks[i + 1], keypairs[i], hosts)

    roles = {"guest": guest, **{h: (lambda i=i: host(i)) for i, h in enumerate(hosts)}}
    out = run_parties(network, roles)
    return out["guest"], lookup[tuple(clusters)], network


def _adversarial_lookup(ks: list[int], n_segments: int, seed: int) -> np.ndarray:
    """Every segment ``0..K-1`` in some cell (the largest id too: the widest entry and mask), the rest
    random, a tenth of the cells withheld (-1), the first and last cell the extremes."""
    rng = np.random.default_rng(seed)
    cells = int(np.prod(ks))
    flat = np.where(rng.random(cells) < 0.1, -1, rng.integers(0, n_segments, cells))
    flat[0], flat[-1] = n_segments - 1, -1
    inner = 1 + rng.permutation(cells - 2)
    flat[inner[:n_segments]] = np.arange(n_segments)
    return flat.reshape(ks)


@pytest.mark.parametrize(
    ("ks", "n_segments", "n"),
    [([32, 24], 500, 2000), ([10, 8, 5], 250, 1200)],
    ids=["1 host", "2 hosts"],
)
def test_the_chain_equals_the_lookup_on_thousands_of_rows_and_an_adversarial_table(
    keypairs, ks, n_segments, n
):
    """Many local clusters, large K with every segment used, withheld cells: the chain's label of every
    row is exactly the lookup of its local clusters (in row order)."""
    lookup = _adversarial_lookup(ks, n_segments, seed=len(ks))
    rng = np.random.default_rng(7)
    cells = np.concatenate([np.arange(lookup.size), rng.integers(0, lookup.size, n - lookup.size)])
    clusters = list(np.unravel_index(rng.permutation(cells), ks))  # every cell in some row, rows shuffled
    got, truth, _ = _chain(keypairs, len(ks) - 1, ks=ks, lookup=lookup, clusters=clusters)
    assert set(truth) == set(range(-1, n_segments))  # the rows reach every segment and a withheld cell
    np.testing.assert_array_equal(got, truth)


@pytest.mark.parametrize("n_hosts", [1, 2, 3])
def test_the_chain_gives_the_guest_the_lookup_entry_of_every_row(keypairs, n_hosts):
    got, truth, network = _chain(keypairs, n_hosts)
    np.testing.assert_array_equal(got, truth)
    # the only plaintext per-row message is the last host's masked label, to the guest
    last = f"host{n_hosts}"
    for m in network.transcript:
        name = find(ALL_PROTOCOLS, m.tag)[1].name
        table = decode_table(m.payload)
        if name == "segment.label":
            assert (m.sender, m.receiver) == (last, "guest")
            values = ints_from_arrow(table)
            assert min(values) > 6 and max(values) > 2**38  # masked, not segment ids
        elif name.startswith("segment."):
            assert name in {"segment.onehot", "segment.masked-label", "segment.relay", "segment.select"}
            assert table.column_names == ["ciphertext"]


def test_membership_release_with_two_hosts(keypairs):
    n, k = 500, 3
    data = vertical_blobs(n, [2, 2, 2], centers=k, cluster_std=1.0, seed=4)
    frames = frames_of(data.parts)
    sim = simulate_segment(
        frames[0], frames[1:], id="id", k=k, key_bits=1024, keypairs=keypairs[:2], local_k=4,
        membership="guest", policies=[RELEASE, {"release_membership": True}],
    )  # fmt: skip
    labels = sim.guest.labels
    assert labels is not None and len(labels) == n
    np.testing.assert_array_equal(labels["segment"].to_numpy(), assignment(sim))
    per_row = set()
    for m in sim.network.transcript:
        found = find(ALL_PROTOCOLS, m.tag)
        if found and found[1].name.startswith("segment.") and decode_table(m.payload).num_rows >= n:
            per_row.add((found[1].name, m.sender, m.receiver))
            if found[1].name != "segment.label":
                assert (
                    all(f.kind is FIXED for f in found[1].fields) and "ciphertext" in found[1].fields[0].name
                )
    assert per_row == {
        ("segment.xt-rows", "host1", "guest"),
        ("segment.xt-rows", "host2", "guest"),
        ("segment.onehot", "host1", "guest"),
        ("segment.onehot", "host2", "guest"),
        ("segment.masked-label", "guest", "host1"),
        ("segment.relay", "guest", "host1"),
        ("segment.select", "host1", "guest"),
        ("segment.masked-label", "guest", "host2"),
        ("segment.label", "host2", "guest"),
    }
    _assert_no_raw_values(sim.network, frames)
    with pytest.raises(ConfigError, match="policy of host2 does not allow it"):
        simulate_segment(
            frames[0], frames[1:], id="id", k=k, key_bits=1024, keypairs=keypairs[:2], local_k=4,
            membership="guest", policies=[RELEASE, {}],
        )  # fmt: skip


@pytest.mark.slow  # a segment job and two scoring jobs of three parties: ~10 s idle, 25+ s on a loaded machine
def test_a_segment_model_of_three_parties_assigns_new_customers(tmp_path, keypairs):
    from vfl.segmentation.model import SegmentModel

    data = vertical_blobs(400, [2, 2, 2], centers=3, seed=8)
    frames = frames_of(data.parts)
    train = [f.iloc[:320] for f in frames]
    sim = simulate_segment(train[0], train[1:], id="id", k=3, key_bits=1024, keypairs=keypairs[:2], local_k=4,
                           membership="guest", policies=[RELEASE, RELEASE], output_dir=tmp_path)  # fmt: skip
    job = Job("assign", "guest", ("host1", "host2"), kind="predict", model="segment-simulation")
    parties = ("guest", "host1", "host2")
    models = {p: SegmentModel.load(tmp_path / p / "segment_model.json") for p in parties}
    datas = dict(zip(parties, frames, strict=True))
    keys = {"host1": keypairs[0], "host2": keypairs[1]}

    def run(policies):
        return predict_segments(job, models, datas, keys, policies)

    allow = SegmentPolicy(release_membership=True)
    segments = run({"host1": allow, "host2": allow})["guest"].result
    assert len(segments) == 400
    known = sim.guest.labels.set_index("id")["segment"]
    again = segments.set_index("id")["segment"].reindex(known.index)
    assert (again == known).all()
    with pytest.raises(ConfigError, match="release_membership"):
        run({"host1": allow, "host2": SegmentPolicy()})


def test_a_segment_model_scores_only_with_the_hosts_it_was_made_with():
    import pandas as pd

    from vfl.parties.segment import assign_guest
    from vfl.segmentation.model import SegmentModel

    model = SegmentModel("seg", "guest", "guest", ("guest", "host1", "host2"), ("x",), np.zeros(1), np.ones(1),
                         np.zeros((2, 1)), np.zeros((2, 3, 3), dtype=np.int64), {})  # fmt: skip
    job = Job("assign", "guest", ("host1",), kind="predict", model="seg")
    with pytest.raises(ConfigError, match=r"made with 2 host\(s\), this job has 1"):
        assign_guest(None, job, pd.DataFrame({"id": [1], "x": [0.0]}), model)


def test_the_released_segments_are_what_predict_and_the_saved_models_give_every_row(tmp_path, keypairs):
    """Real data whose local clusters get dissolved (breast cancer, min rows 20): the membership release
    of the segment job, ``vfl predict`` with the saved models on the same customers (in another order)
    and the lookup of the models' own local clusters agree on every row."""
    import pandas as pd

    from vfl import datasets
    from vfl.segmentation.model import SegmentModel

    guest = pd.read_csv(datasets.path("breast_hetero_guest.csv")).drop(columns=["y"])
    host = pd.read_csv(datasets.path("breast_hetero_host.csv")).sample(frac=1.0, random_state=1)
    sim = simulate_segment(guest, host, id="id", k=3, key_bits=1024, keypairs=keypairs[:1], min_size=40,
                           membership="guest", policies=[RELEASE], output_dir=tmp_path)  # fmt: skip
    released = sim.guest.labels.set_index("id")["segment"]
    assert len(released) == 569
    models = {p: SegmentModel.load(tmp_path / p / "segment_model.json") for p in ("guest", "host1")}
    ids = released.index
    direct = models["guest"].lookup[
        models["guest"].local_clusters(guest.set_index("id").loc[ids]),
        models["host1"].local_clusters(host.set_index("id").loc[ids]),
    ]
    np.testing.assert_array_equal(released.to_numpy(), direct)
    job = Job("assign", "guest", ("host1",), kind="predict", model="segment-simulation")
    datas = {"guest": guest.sample(frac=1.0, random_state=2), "host1": host.iloc[::-1]}
    allow = {"host1": SegmentPolicy(release_membership=True)}
    predicted = predict_segments(job, models, datas, {"host1": keypairs[0]}, allow)["guest"].result
    again = predicted.set_index("id")["segment"].reindex(ids)
    np.testing.assert_array_equal(again.to_numpy(), released.to_numpy())
