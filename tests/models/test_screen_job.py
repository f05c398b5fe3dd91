"""The ``screen`` job kind: WOE and IV of every column across parties, exact against pandas on the joined data.

The federated run (guest + two hosts over the in-process network, real Paillier) must give the same
per-bin counts and the same IV as binning the joined table centrally with pandas; every message must be
declared, and a host must receive nothing but ciphertexts, the session's messages and (when shared) its
own columns' IV.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tests.test_declared_messages import _run, assert_all_declared
from vfl.crypto import generate_keypair
from vfl.errors import ConfigError, DataError
from vfl.options import ScreenOptions
from vfl.parties.common import Job
from vfl.screening import Binning, merge_small_bins, optimal_monotone_binning


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


@pytest.fixture(scope="module")
def frames(fate):
    guest = pd.read_csv(fate / "breast_hetero_guest.csv")
    host = pd.read_csv(fate / "breast_hetero_host.csv")
    host.loc[host.index[:40], "x0"] = np.nan  # a missing bin of its own (>= k rows)
    host.loc[host.index[100:105], "x1"] = np.nan  # too few: merged into a value bin
    half = ["id", *host.columns[1:6]]
    return guest, host[half], host[["id", *host.columns[6:12]]]


def _pandas_counts(values: pd.Series, y: pd.Series, bins: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Central reference: pandas qcut bins, small bins merged, events / non-events per bin by groupby."""
    present = values.dropna()
    _, edges = pd.qcut(present, bins, retbins=True, duplicates="drop")
    cuts = [c for c in edges[1:-1] if present.min() < c < present.max()]
    codes = pd.cut(values, [-math.inf, *cuts, math.inf], labels=False, right=True)
    n_value = len(cuts) + 1
    codes = codes.fillna(n_value).astype(int)
    sizes = codes.value_counts().reindex(range(n_value + 1), fill_value=0).to_numpy()
    final = merge_small_bins(Binning(tuple(cuts)), sizes, k)  # the merging rule is the spec
    codes = pd.cut(values, [-math.inf, *final.cuts, math.inf], labels=False, right=True)
    missing = final.missing_bin if final.missing_into is None else final.missing_into
    codes = codes.fillna(missing).astype(int)
    grouped = y.groupby(codes).agg(["sum", "count"]).reindex(range(final.n_bins), fill_value=0)
    events = grouped["sum"].to_numpy(dtype=np.int64)
    return events, grouped["count"].to_numpy(dtype=np.int64) - events


def _pandas_iv(events: np.ndarray, non_events: np.ndarray) -> float:
    t = pd.DataFrame({"e": events, "n": non_events}).astype(float)
    t = t[(t.e + t.n) > 0]
    fix = (t.e == 0) | (t.n == 0)
    total_e, total_n = t.e.sum(), t.n.sum()
    t.loc[fix, ["e", "n"]] += 0.5
    de, dn = t.e / total_e, t.n / total_n
    return float(((de - dn) * np.log(de / dn)).sum())


def _screen(frames, keypair, **options):
    guest, host1, host2 = frames
    job = Job("s", "guest", ("host1", "host2"), kind="screen", screen=ScreenOptions(key_bits=1024, **options))
    network, outcome = _run(job, {"guest": guest, "host1": host1, "host2": host2}, keypair=keypair)
    return job, network, outcome


def test_screening_equals_pandas_on_the_joined_data(frames, keypair):
    job, network, outcome = _screen(frames, keypair, bins=10, min_bin_size=20, share_iv=True)
    guest, host1, host2 = frames
    result = outcome["guest"].result
    labels = guest[["id", "y"]]
    woe = result.woe
    for owner, frame in (("guest", guest), ("host1", host1), ("host2", host2)):
        joined = frame.drop(columns="y", errors="ignore").merge(labels, on="id")  # the joined data
        for column in frame.columns.drop(["id", "y"], errors="ignore"):
            events, non_events = _pandas_counts(joined[column], joined["y"], 10, 20)
            mine = woe[(woe.owner == owner) & (woe.column == column)]
            np.testing.assert_array_equal(mine["events"].to_numpy(), events, err_msg=f"{owner}:{column}")
            np.testing.assert_array_equal(mine["non_events"].to_numpy(), non_events, err_msg=column)
            iv = result.iv.set_index(["owner", "column"]).loc[(owner, column), "iv"]
            assert iv == pytest.approx(_pandas_iv(events, non_events), rel=1e-12, abs=1e-15)
            rows = (mine["events"] + mine["non_events"]).to_numpy()
            assert np.all((rows == 0) | (rows >= 20))  # no bin describes fewer than k customers
    assert len(result.iv) == 10 + 5 + 6 and list(result.iv["iv"]) == sorted(result.iv["iv"], reverse=True)
    missing = woe[(woe.owner == "host1") & (woe.column == "x0") & (woe.bin == "missing")]
    assert int(missing["events"].iloc[0] + missing["non_events"].iloc[0]) == 40

    seen = assert_all_declared(network, job)
    assert {"screen.labels", "screen.bins", "screen.sums", "screen.iv", "session.public-key"} <= seen
    for m in network.transcript:  # what reaches a host: ciphertexts, PSI, the session, its own IV
        if m.receiver.startswith("host") and m.tag.startswith("screen/"):
            assert m.tag in (f"screen/labels/{m.receiver}", f"screen/iv/{m.receiver}"), m.tag
    shared = outcome["host1"].result.iv
    assert sorted(shared["column"]) == sorted(host1.columns.drop("id"))
    host_ledger = outcome["host1"].result.ledger
    assert "labels" in host_ledger.never_learns and "event counts" in host_ledger.never_learns
    assert not any("event counts" in x for x in host_ledger.learns)
    assert any("per-bin event counts" in x for x in outcome["guest"].result.ledger.learns)


def test_monotone_screening_equals_central_optimal_monotone_binning(frames, keypair):
    job, network, outcome = _screen(frames, keypair, bins=8, min_bin_size=25, method="monotone")
    guest, host1, host2 = frames
    woe = outcome["guest"].result.woe
    for owner, frame in (("guest", guest), ("host2", host2)):
        joined = frame.drop(columns="y", errors="ignore").merge(guest[["id", "y"]], on="id")
        for column in frame.columns.drop(["id", "y"], errors="ignore"):
            _, events, non_events = optimal_monotone_binning(
                joined[column].to_numpy(float), joined["y"].to_numpy(float), bins=8, k=25
            )
            mine = woe[(woe.owner == owner) & (woe.column == column)]
            np.testing.assert_array_equal(mine["events"].to_numpy(), events, err_msg=column)
            np.testing.assert_array_equal(mine["non_events"].to_numpy(), non_events, err_msg=column)
            w = mine["woe"].to_numpy()[:-1][(mine["rows"].to_numpy()[:-1] > 0)]
            assert np.all(np.diff(w) > 0) or np.all(np.diff(w) < 0) or len(w) <= 1
    assert outcome["host1"].result.iv is None  # not shared by default


def test_screening_refuses_bins_below_the_floor_and_one_class_labels(frames, keypair):
    with pytest.raises(ConfigError, match=r"min_bin_size must be an int in \[5, inf\)"):
        ScreenOptions(min_bin_size=2)
    guest, host1, host2 = frames
    one_class = guest.assign(y=1)
    job = Job("s", "guest", ("host1",), kind="screen", screen=ScreenOptions(key_bits=1024))
    with pytest.raises(DataError, match="exactly two distinct values, found 1"):
        _run(job, {"guest": one_class, "host1": host1}, keypair=keypair)


def test_screen_section_of_job_toml(tmp_path):
    from vfl.config import JobConfig

    path = tmp_path / "job.toml"
    path.write_text(
        '[job]\nid = "s1"\nkind = "screen"\n[screen]\nbins = 8\nmethod = "monotone"\nshare_iv = true\n'
    )
    options = JobConfig.load(path).options("screen")
    assert (options.bins, options.method, options.share_iv, options.min_bin_size) == (8, "monotone", True, 20)
    path.write_text('[job]\nid = "s1"\nkind = "screen"\n[screen]\nmin_bin_size = 1\n')
    with pytest.raises(
        ConfigError, match=r"\[screen\]: screen option min_bin_size must be an int in \[5, inf\)"
    ):
        JobConfig.load(path)
    path.write_text('[job]\nid = "s1"\nkind = "screen"\n[psi]\nreveal = "guest-only"\n')
    with pytest.raises(ConfigError, match='screening job needs reveal = "all"'):
        JobConfig.load(path)
    path.write_text('[job]\nid = "s1"\nkind = "screen"\n[train]\nmax_epochs = 2\n')
    with pytest.raises(ConfigError, match="has no section"):
        JobConfig.load(path)
    settings = Job("s1", "g", ("h",), kind="screen", screen=ScreenOptions(bins=8)).settings()
    assert settings["screen.bins"] == 8 and "train.max_epochs" not in settings
