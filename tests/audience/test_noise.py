"""Noise: released values carry discrete Laplace noise of the job's epsilon from both parties, and each
party's view contains noise it did not add (read from the captured transcript)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import vfl
from vfl.analytics.dp import noise_variance
from vfl.datasets import marketing
from vfl.protocols.audience import frame_from_json
from vfl.transport import decode_table

# counts only: every count gets epsilon 1 (parallel over the disjoint cells)
SEGMENTS = {
    # 30 guest cells x 5 host cells: the host's rows are the cheaper ones, it encrypts (two rows a plaintext)
    "host encrypts": {"retailer": ["age_band", "region"], "bank": ["income_band"]},
    # 3 guest cells x 45 host cells: the guest encrypts, under its own key
    "guest encrypts": {"retailer": ["channel"], "bank": ["income_band", "products_held"]},
}
RUNS = {"host encrypts": 3, "guest encrypts": 4}  # jobs pooled per view: > 240 cells that are never withheld


@pytest.fixture(
    scope="module",
    params=["host encrypts", pytest.param("guest encrypts", marks=pytest.mark.slow)],  # ~35 s: slow
)
def big(request):
    d = marketing(6000, seed=5)
    d["bank"]["products_held"] = d["bank"]["products_held"].astype(
        str
    )  # its labels as the cross-tab shows them
    keys = [*SEGMENTS[request.param]["retailer"], *SEGMENTS[request.param]["bank"]]
    joined = d["retailer"].merge(d["bank"], on="id")
    exact = joined.groupby(keys, observed=False).size().rename("exact").reset_index()
    for c in keys:
        exact[c] = exact[c].astype(str)
    options = {"segments": SEGMENTS[request.param], "key_bits": 1024, "k": 2, "epsilon": 1.0}
    guest_rows = any(
        "guest-rows" in m.tag for m in _run(d, {}, options, off=("retailer", "bank")).network.transcript
    )
    assert guest_rows == (request.param == "guest encrypts")
    return d, exact, keys, options, RUNS[request.param]


def _released_to_host(result) -> pd.DataFrame:
    """The table the host received, read from the transcript (audience.release)."""
    (msg,) = [m for m in result.network.transcript if m.tag == "audience/bank/release"]
    return frame_from_json(decode_table(msg.payload)["table"][0].as_py())


def _errors(released: pd.DataFrame, exact: pd.DataFrame) -> np.ndarray:
    got = released.copy()
    keys = [c for c in exact.columns if c != "exact"]
    for c in keys:
        got[c] = got[c].astype(str)
    m = exact.merge(got, on=keys, validate="1:1")
    big_cells = m["exact"] >= 15  # never withheld at k = 2 with this noise
    assert not m.loc[big_cells, "suppressed"].any()
    return (m.loc[big_cells, "count"] - m.loc[big_cells, "exact"]).to_numpy(dtype=float)


def _run(d, keys, options, off=()):
    return vfl.simulate_audience(
        d["retailer"], {"bank": d["bank"]}, id="id", guest_name="retailer", keypairs=keys, workers=1,
        _noise_off_for_tests=off, **options,
    )  # fmt: skip


def test_each_party_sees_noise_it_did_not_add(big, host_keypairs):
    d, exact, _, options, runs = big

    def view(
        off: tuple[str, ...],
    ) -> np.ndarray:  # three jobs pooled: ~300 cells, so the bounds below are tight
        return np.concatenate(
            [_errors(_released_to_host(_run(d, host_keypairs, options, off=off)), exact) for _ in range(runs)]
        )

    # The guest adds no noise: what it sees (and forwards) still differs from the truth by the host's share.
    guest_view = view(("retailer",))
    # The host adds no noise: what it receives differs from the truth by the guest's share.
    host_view = view(("bank",))
    one_share = noise_variance(1.0)
    for seen in (guest_view, host_view):
        n = len(seen)
        assert n > 240
        assert np.mean(seen != 0) > 0.4  # P(Z = 0) = (1 - p) / (1 + p) = 0.46 for epsilon 1
        assert abs(seen.mean()) < 5 * np.sqrt(one_share / n)
        # The sample variance of n draws of one share has relative sd sqrt((kurtosis - 1) / n), with
        # kurtosis 6.54 for the discrete Laplace at epsilon 1: 4.5 sd either side (about 1 in 10^5 to
        # fail) still tells one share (ratio 1) from none (0) and from both parties' shares (2).
        spread = 4.5 * np.sqrt((6.54 - 1) / n)
        assert 1 - spread < seen.var() / one_share < 1 + spread < 2
    # and with the hook on both sides, nothing is noised (the hook is what makes the views above one-sided)
    assert not _errors(
        _released_to_host(_run(d, host_keypairs, options, off=("retailer", "bank"))), exact
    ).any()


@pytest.mark.slow
def test_released_noise_has_the_variance_of_two_shares_at_epsilon(big, host_keypairs):
    d, exact, _, options, _ = big
    errors = np.concatenate(
        [_errors(_released_to_host(_run(d, host_keypairs, options)), exact) for _ in range(8)]
    )
    two_shares = 2 * noise_variance(1.0)
    assert abs(errors.mean()) < 4 * np.sqrt(two_shares / len(errors))
    assert 0.8 < errors.var() / two_shares < 1.25, (errors.var(), two_shares, len(errors))
