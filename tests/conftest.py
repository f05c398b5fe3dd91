from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fate() -> Path:
    """The vertically split FATE example datasets shipped beside the repository."""
    for candidate in (ROOT.parent / "shared" / "data" / "fate", ROOT / "vfl" / "datasets"):
        if (candidate / "breast_hetero_guest.csv").exists():
            return candidate
    pytest.fail("FATE example data not found beside the repository (../shared/data/fate)")
