"""The PSI message flow against Python set intersection, for a guest and one or two hosts."""

from __future__ import annotations

import random
import threading

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfl import simulate_psi
from vfl.errors import ConfigError, DataError, ProtocolError, VflError
from vfl.parties.simulation import run_parties, simulate_psi_results
from vfl.protocols.psi import run_guest, run_host
from vfl.psi import Normalization, PsiOptions
from vfl.transport import LocalNetwork


def make_sets(rng: random.Random, sizes: list[int], common: int, pool: int = 10_000) -> list[list[str]]:
    """Sets of the given sizes sharing exactly ``common`` ids, in random order."""
    ids = [f"cust-{i:06d}" for i in rng.sample(range(pool), common + sum(s - common for s in sizes))]
    shared, rest = ids[:common], ids[common:]
    out = []
    for size in sizes:
        own, rest = rest[: size - common], rest[size - common :]
        party = shared + own
        rng.shuffle(party)
        out.append(party)
    return out


def check_alignment(frames: list[pd.DataFrame], sets: list[list], expected: set) -> None:
    """Every party holds exactly the expected ids, all in one shared order, rows lined up."""
    ids = [frame["id"].map(lambda v: str(v).strip()).tolist() for frame in frames]
    assert set(ids[0]) == expected
    assert len(ids[0]) == len(expected)
    for party_ids in ids[1:]:
        assert party_ids == ids[0]  # same order everywhere
    for frame, original in zip(frames, sets, strict=True):
        # Each party's aligned rows are its own rows (the 'row' column is the original position).
        assert [original[r] for r in frame["row"]] == frame["id"].tolist()


def frames_for(sets: list[list]) -> list[pd.DataFrame]:
    return [pd.DataFrame({"id": s, "row": range(len(s))}) for s in sets]


@pytest.mark.parametrize("hosts", [1, 2])
@pytest.mark.parametrize("common", [0, 1, 137, 300])
def test_against_set_intersection(hosts, common):
    rng = random.Random(common * 10 + hosts)
    sizes = [300, 300, 450][: hosts + 1]
    sets = make_sets(rng, sizes, min(common, 300))
    frames = frames_for(sets)
    out = simulate_psi(frames[0], frames[1:], id="id")
    expected = set.intersection(*map(set, sets))
    assert len(expected) == min(common, 300)
    check_alignment(out, sets, expected)


def test_partial_overlaps_with_two_hosts_keep_rows_present_everywhere():
    rng = random.Random(5)
    universe = [f"u{i}" for i in range(2000)]
    sets = [rng.sample(universe, 1200), rng.sample(universe, 1500), rng.sample(universe, 900)]
    frames = frames_for(sets)
    out = simulate_psi(frames[0], frames[1:], id="id")
    expected = set(sets[0]) & set(sets[1]) & set(sets[2])
    assert 0 < len(expected) < 900
    check_alignment(out, sets, expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=0, max_size=40, unique=True),
    st.data(),
)
def test_random_sets_hypothesis(universe, data):
    universe = [u for u in universe if u.strip()]
    norm = Normalization(strip=False)
    guest = data.draw(st.lists(st.sampled_from(universe), unique=True) if universe else st.just([]))
    host = data.draw(st.lists(st.sampled_from(universe), unique=True) if universe else st.just([]))
    frames = frames_for([guest, host])
    out = simulate_psi(frames[0], frames[1:], id="id", normalization=norm)
    assert out[0]["id"].tolist() == out[1]["id"].tolist()
    assert set(out[0]["id"]) == set(guest) & set(host)


def test_unicode_and_whitespace_variants():
    guest = pd.DataFrame({"id": ["  Müller ", "ＡＢＣ", "Straße", "plain", "ﬁle"], "g": range(5)})
    host = pd.DataFrame({"id": ["müller", "abc", "STRASSE", "plain ", "file"], "h": range(5)})
    # Default (strip only): only the whitespace variant matches.
    out = simulate_psi(guest, [host], id="id")
    assert out[0]["id"].tolist() == ["plain"] and out[1]["id"].tolist() == ["plain "]
    # Full normalization: everything matches, rows line up.
    out = simulate_psi(guest, [host], id="id", casefold=True, nfkc=True)
    assert len(out[0]) == 5
    assert (out[0]["g"].to_numpy() == out[1]["h"].to_numpy()).all()
    # No normalization at all: nothing matches (every id differs in some byte).
    out = simulate_psi(guest, [host], id="id", strip=False)
    assert len(out[0]) == 0 and len(out[1]) == 0


def test_integer_ids_match_their_decimal_string():
    guest = pd.DataFrame({"id": [7, 8, 9, 10], "x": [1, 2, 3, 4]})
    host = pd.DataFrame({"id": ["7", " 9", "11"], "y": [5, 6, 7]})
    g, h = simulate_psi(guest, [host], id="id")
    assert sorted(g["id"].tolist()) == [7, 9]
    assert [str(v).strip() for v in h["id"]] == [str(v) for v in g["id"]]


def test_results_and_shared_order_are_random_not_input_order():
    ids = [f"id{i}" for i in range(400)]
    frames = frames_for([ids, list(reversed(ids))])
    g, h = simulate_psi(frames[0], frames[1:], id="id")
    assert g["id"].tolist() == h["id"].tolist()
    assert g["row"].tolist() != sorted(
        g["row"]
    )  # not the guest's order, which could leak e.g. a sort by label


def test_guest_only_reveal_gives_hosts_the_size_alone():
    guest = pd.DataFrame({"id": [f"a{i}" for i in range(50)]})
    host = pd.DataFrame({"id": [f"a{i}" for i in range(25, 90)]})
    g, h = simulate_psi_results(guest, [host], id="id", reveal="guest-only")
    assert g.size == 25 and g.rows_revealed and len(g.rows) == 25
    assert h.size == 25 and not h.rows_revealed and len(h.rows) == 0 and len(h.ids) == 0
    frames = simulate_psi(guest, [host], id="id", reveal="guest-only")
    assert len(frames[0]) == 25 and len(frames[1]) == 0
    assert h.set_sizes == {"host1": 65, "guest": 50}
    assert g.set_sizes == {"guest": 50, "host1": 65}


def test_empty_intersection_is_reported_clearly():
    g, h = simulate_psi_results(pd.DataFrame({"id": ["a", "b"]}), [pd.DataFrame({"id": ["c"]})], id="id")
    assert g.size == 0 and h.size == 0 and g.empty
    with pytest.raises(DataError, match=r"the parties share no ids: .*'guest' has 2.*'host1' has 1"):
        g.require_nonempty()
    with pytest.raises(DataError, match="the parties share no ids"):
        h.require_nonempty()
    frames = simulate_psi(pd.DataFrame({"id": ["a"], "x": [1.0]}), [pd.DataFrame({"id": ["c"]})], id="id")
    assert list(frames[0].columns) == ["id", "x"] and len(frames[0]) == 0


def test_empty_party_is_an_empty_intersection():
    g, h = simulate_psi_results(
        pd.DataFrame({"id": pd.Series([], dtype=object)}), [pd.DataFrame({"id": ["c"]})], id="id"
    )
    assert g.size == h.size == 0


def test_duplicates_error_and_dedupe_first():
    guest = pd.DataFrame({"id": ["a", "b", "a", "c"], "x": [1, 2, 3, 4]})
    host = pd.DataFrame({"id": ["a", "c", "d"]})
    with pytest.raises(DataError, match=r"id column 'id' has 1 duplicate id .*'a' at rows 0 and 2"):
        simulate_psi(guest, [host], id="id")
    g, h = simulate_psi(guest, [host], id="id", dedupe="first")
    assert dict(zip(g["id"], g["x"], strict=True)) == {"a": 1, "c": 4}
    assert g["id"].tolist() == h["id"].tolist()


def test_host_data_errors_surface_as_the_original_error():
    guest = pd.DataFrame({"id": ["a", "b"]})
    bad_host = pd.DataFrame({"id": ["a", None, None]})
    with pytest.raises(DataError, match="2 of 3 rows have no id"):
        simulate_psi(guest, [pd.DataFrame({"id": ["a"]}), bad_host], id="id")


def test_missing_id_column():
    with pytest.raises(DataError, match=r"host 'host1'.* no id column 'cid'; columns available: id, x"):
        simulate_psi(pd.DataFrame({"cid": [1]}), [pd.DataFrame({"id": [1], "x": [2]})], id="cid")
    with pytest.raises(DataError, match=r"guest's table has no id column 'cid'"):
        simulate_psi(pd.DataFrame({"id": [1]}), [pd.DataFrame({"cid": [1]})], id="cid")


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown PSI option\(s\) casefolding; known options: .*casefold"):
        simulate_psi(pd.DataFrame({"id": [1]}), [pd.DataFrame({"id": [1]})], id="id", casefolding=True)
    with pytest.raises(ConfigError, match="reveal"):
        PsiOptions(reveal="host-only")  # type: ignore[arg-type]


def run_pair(guest_options: PsiOptions, host_options: PsiOptions, guest_ids=("a", "b"), host_ids=("a",)):
    """Run one guest and one host in threads; return each side's outcome (result or exception)."""
    net = LocalNetwork(["guest", "host"])
    outcome: dict[str, object] = {}

    def guest() -> None:
        try:
            outcome["guest"] = run_guest(net.channel("guest"), list(guest_ids), ["host"], guest_options)
        except VflError as exc:
            outcome["guest"] = exc

    def host() -> None:
        try:
            outcome["host"] = run_host(net.channel("host"), list(host_ids), "guest", host_options)
        except VflError as exc:
            outcome["host"] = exc

    threads = [threading.Thread(target=guest), threading.Thread(target=host)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcome, net


def test_mismatched_normalization_refused_by_both_sides_naming_the_setting():
    outcome, net = run_pair(PsiOptions(normalization=Normalization(casefold=True)), PsiOptions(timeout=5))
    for side in ("guest", "host"):
        error = outcome[side]
        assert isinstance(error, ConfigError), error
        assert "psi.normalization.casefold (" in str(error)
        assert "strip" not in str(error)  # only the setting that differs is named
    # Nothing but the agreement was sent before the settings agreed.
    assert {m.tag for m in net.transcript} <= {"session/agree", "vfl/abort"}


def test_mismatched_reveal_and_salt():
    outcome, _ = run_pair(PsiOptions(reveal="guest-only"), PsiOptions())
    assert isinstance(outcome["host"], ConfigError) and "psi.reveal (all here, guest-only there)" in str(
        outcome["host"]
    )
    assert isinstance(outcome["guest"], ConfigError) and "psi.reveal" in str(outcome["guest"])
    outcome, _ = run_pair(PsiOptions(salt=b"1" * 32), PsiOptions(salt=b"2" * 32))
    assert isinstance(outcome["host"], ProtocolError) and "salt" in str(outcome["host"])
    # The guest learns that the host stopped and why in general terms, never the host's error text.
    assert isinstance(outcome["guest"], ProtocolError)
    assert "party 'host' stopped the job (protocol:" in str(outcome["guest"])
    outcome, _ = run_pair(PsiOptions(salt=b"1" * 32), PsiOptions(salt=b"1" * 32))
    assert outcome["guest"].size == outcome["host"].size == 1


def test_guest_data_error_stops_the_host_promptly():
    outcome, net = run_pair(PsiOptions(), PsiOptions(timeout=20), guest_ids=("a", "a"))
    assert isinstance(outcome["guest"], DataError)
    assert isinstance(outcome["host"], ProtocolError)
    assert "party 'guest' stopped the job (data:" in str(outcome["host"])
    # Only the reason code crossed, not the guest's message (which names its duplicate id).
    aborts = [m for m in net.transcript if m.tag == "vfl/abort"]
    assert aborts and all(b"duplicate" not in m.payload and b"'a'" not in m.payload for m in aborts)


def test_deterministic_tags_and_multi_part_messages():
    options = PsiOptions(message_rows=7)
    outcome, net = run_pair(
        options, options, guest_ids=[f"g{i}" for i in range(30)], host_ids=[f"g{i}" for i in range(10, 50)]
    )
    assert outcome["guest"].size == outcome["host"].size == 20
    assert outcome["guest"].ids.tolist() == outcome["host"].ids.tolist()
    tags = sorted(m.tag for m in net.transcript)
    expected = sorted(
        ["session/agree", "session/agree", "psi/host/hello", "psi/host/hello-ack"]
        + [f"psi/host/guest-points/{i}" for i in range(5)]
        + [f"psi/host/guest-points-double/{i}" for i in range(5)]
        + [f"psi/host/host-points/{i}" for i in range(6)]
        + [f"psi/host/result/{i}" for i in range(3)]
    )
    assert tags == expected


def test_run_parties_reraises_the_first_error_and_aborts_the_rest():
    net = LocalNetwork(["a", "b"])

    def a() -> None:
        raise DataError("broken input at a")

    def b() -> None:
        net.channel("b").recv("a", "never", timeout=30)

    with pytest.raises(DataError, match="broken input at a"):
        run_parties(net, {"a": a, "b": b})


def test_pool_path_end_to_end():
    """Exercise the process pool (small chunks) through the whole protocol."""
    rng = random.Random(3)
    sets = make_sets(rng, [1500, 1200], 700)
    frames = frames_for(sets)
    out = simulate_psi(
        frames[0], frames[1:], id="id", workers=2, parallel_threshold=0, chunk_size=128, message_rows=500
    )
    check_alignment(out, sets, set(sets[0]) & set(sets[1]))
    assert np.all(out[0]["id"].to_numpy() == out[1]["id"].to_numpy())
