"""Bundled example data: FATE's vertically split Breast Cancer Wisconsin (Apache-2.0, see the licence file).

``breast_guest()`` holds ``id``, the label ``y`` and 10 columns; ``breast_host()`` holds ``id`` and 20
other columns about the same 569 patients. ``vfl demo`` and the quickstart use them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd


def path(name: str) -> Path:
    """Filesystem path of a bundled CSV file, e.g. ``path("breast_hetero_guest.csv")``."""
    return Path(str(resources.files(__name__).joinpath(name)))


def breast_guest() -> pd.DataFrame:
    return pd.read_csv(path("breast_hetero_guest.csv"))


def breast_host() -> pd.DataFrame:
    return pd.read_csv(path("breast_hetero_host.csv"))


from vfl.datasets.marketing import marketing as marketing  # noqa: E402 - synthetic retailer/bank/publisher audience
