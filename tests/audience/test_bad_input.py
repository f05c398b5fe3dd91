"""Bad input: each a clear one-line error naming the column or option, and nothing written."""

from __future__ import annotations

import pytest

import vfl
from tests.audience.conftest import audience_options
from vfl.config import JobConfig
from vfl.errors import ConfigError, VflError


def _run(market, tmp_path, *, offered=None, frames=None, **options):
    r, b = frames or (market["retailer"], market["bank"])
    return vfl.simulate_audience(
        r, {"bank": b}, id="id", guest_name="retailer", workers=1, output_dir=tmp_path / "out",
        budgets={"retailer": tmp_path / "ws-r", "bank": tmp_path / "ws-b"}, offered=offered, **options,
    )  # fmt: skip


def _nothing_written(tmp_path):
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_a_segment_column_with_more_categories_than_slots(market, tmp_path):
    r = market["retailer"].copy()
    r["zip"] = (r["id"] % 40).astype(str)
    opts = audience_options()
    opts["segments"]["retailer"] = ["zip"]
    with pytest.raises(
        ConfigError, match=r"segment column 'zip' of 'retailer' has 40 categories, more than the 16"
    ):
        _run(market, tmp_path, frames=(r, market["bank"]), **opts)
    _nothing_written(tmp_path)


def test_a_metric_column_without_bounds(market, tmp_path):
    opts = audience_options()
    del opts["bounds"]["balance"]
    with pytest.raises(ConfigError, match=r"metric column 'balance' of 'bank' has no bounds"):
        _run(market, tmp_path, **opts)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("epsilon", [0, -1.0, float("inf")])
def test_epsilon_must_be_positive(market, tmp_path, epsilon):
    with pytest.raises(ConfigError, match=r"audience option epsilon must be a float in \(0, inf\)"):
        _run(market, tmp_path, **audience_options(epsilon=epsilon))
    _nothing_written(tmp_path)


@pytest.mark.parametrize("k", [1, 0, -5])
def test_k_below_two(market, tmp_path, k):
    with pytest.raises(ConfigError, match=r"audience option k must be an int in \[2, inf\)"):
        _run(market, tmp_path, **audience_options(k=k))
    _nothing_written(tmp_path)


def test_a_column_not_offered_in_party_toml(market, tmp_path):
    offered = {"retailer": ["age_band", "region"], "bank": None}
    with pytest.raises(ConfigError, match=r"column 'spend' of party 'retailer' is not offered to jobs"):
        _run(market, tmp_path, offered=offered, **audience_options())
    _nothing_written(tmp_path)


def test_a_column_missing_from_the_data_and_an_unknown_party(market, tmp_path):
    opts = audience_options()
    opts["segments"]["bank"] = ["no_such_column"]
    with pytest.raises(VflError, match=r"column 'no_such_column' of party 'bank' is not in its data"):
        _run(market, tmp_path, **opts)
    opts = audience_options()
    opts["segments"]["acme"] = ["x"]
    with pytest.raises(ConfigError, match=r"'acme' take\(s\) no part in the job"):
        _run(market, tmp_path, **opts)
    _nothing_written(tmp_path)


def test_job_toml_names_the_option_and_cannot_turn_noise_off(tmp_path):
    def load(body: str):
        path = tmp_path / "job.toml"
        path.write_text('[job]\nid = "a1"\nkind = "audience"\n[audience]\n' + body)
        return JobConfig.load(path)

    with pytest.raises(ConfigError, match=r"\[audience\]: audience option epsilon must be a float"):
        load("epsilon = 0\n")
    with pytest.raises(ConfigError, match=r"audience option k must be an int in \[2, inf\)"):
        load("k = 1\n")
    for attempt in ("disable_noise_for_tests = true\n", "noise = false\n", "_noise_off_for_tests = ['a']\n"):
        with pytest.raises(ConfigError, match="unknown audience option"):
            load(attempt)
    with pytest.raises(ConfigError, match="has no bounds"):
        load('metrics = { retailer = ["spend"] }\n')
    config = load('segments = { retailer = ["age_band"] }\n')
    options = config.options("audience")
    assert options.epsilon == 1.0 and options.k == 20 and options.key_bits == 2048  # the safe defaults
